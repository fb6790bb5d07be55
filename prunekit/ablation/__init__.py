"""The paper's ablation grid from one recipe: the grid's spec, its runs, tables and plots.
"""
