"""An ablation file, read strictly: the grid of strategies x sigma targets x seeds, its tasks, baselines and plots.

The format and what the grid runs are described in :mod:`prunekit.ablation.grid`; this module only reads and validates
the file (unknown keys and wrong types fail with their path, like a recipe), so a bad file fails before anything
runs.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from .tables import MEAN
from ..config import check_count, option, parse_section
from ..errors import ConfigError
from ..recipe.spec import read_yaml
from ..recipe.sections import SEED_MAX
from ..engine.strategy import get_strategy

__all__ = ["AblationSpec", "GridSection", "BaselineSection", "TaskSection", "PlotSection", "ClusterSection",
           "LAUNCHERS", "load_ablation", "is_ablation_file"]

LAUNCHERS = ("local", "slurm", "submitit-local")

TASK_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class GridSection:
    strategies: list[str] = field(**option("strategies to compare (rows)", default_factory=lambda: ["tina"]))
    sigma_targets: list[float] = field(**option("compression targets (columns)", default_factory=lambda: [64.0]))
    seeds: list[int] = field(**option("seeds; tables show mean +- std over them", default_factory=lambda: [0]))
    sigma0: float = field(**option("starting compression of iterative strategies (method.sigma)", default=32.0))
    vanilla_adapters: bool = field(**option("add the 'vanilla adapters' row: adapters at sigma, no pruning",
                                            default=True))
    oneshot_sigma_targets: Optional[list[float]] = field(**option(
        "the columns one-shot strategies run (each costs a run; iterative ones fill every column from one run); "
        "default: sigma_targets", default=None))
    vanilla_sigma_targets: Optional[list[float]] = field(**option(
        "the columns of the vanilla-adapters row (adapters cannot be narrower than 1 neuron, so large sigma repeats "
        "one model); default: sigma_targets", default=None))


@dataclass
class BaselineSection:
    label: str = field(**option("row label", default="baseline"))
    method: dict = field(**option("the method section of the cell's recipe",
                                  default_factory=lambda: {"name": "linear"}))


@dataclass
class TaskSection:
    label: str = field(**option("task name: letters, digits, '_' and '-' (it names the task's cells and plots)",
                                default="task"))
    description: str = field(**option("what the task is (table.md lists it)", default=""))
    set: list[str] = field(**option("key=value overrides that make the task (data.name=..., data.classes=...), "
                                    "after the file's set", default_factory=list))


@dataclass
class PlotSection:
    widths_sigma: Optional[float] = field(**option("sigma of the local-vs-global neurons-per-adapter plot (default: "
                                                   "the largest target)", default=None))
    local_strategy: str = field(**option("strategy shown as 'local' in that plot", default="local_l1"))
    global_strategy: str = field(**option("strategy shown as 'global' in that plot", default="tina"))
    stage_strategies: list[str] = field(**option(
        "strategies of the neurons-per-stage-per-cycle plot (default: the global and the local strategy)",
        default_factory=list))


@dataclass
class ClusterSection:
    launcher: Literal["local", "slurm", "submitit-local"] = field(**option(
        "where cells run: local (processes on this machine, --jobs), slurm (one SLURM job per cell through "
        "submitit), submitit-local (submitit's local executor: the cluster's job path as processes here)",
        default="local"))
    partition: Optional[str] = field(**option("SLURM partition (null: the cluster's default)", default=None))
    account: Optional[str] = field(**option("SLURM account to charge (null: the user's default)", default=None))
    qos: Optional[str] = field(**option("SLURM quality of service (null: the default)", default=None))
    gpus_per_job: int = field(**option("GPUs per cell", default=1))
    cpus_per_job: int = field(**option("CPU cores per cell (torch threads and data workers)", default=8))
    mem_gb: Optional[float] = field(**option("memory per cell in GB (null: the partition's default)", default=None))
    time_min: int = field(**option("time limit per job in minutes; a cell that needs longer is requeued and resumes "
                                   "from its resume.pt", default=24 * 60))
    array_parallelism: int = field(**option("jobs of one submission that run at once at most", default=64))
    setup: list[str] = field(**option("shell lines run before each job (module load ..., export ...); the job runs the "
                                      "submitting Python",
                                      default_factory=list))
    additional: dict = field(**option("further sbatch options, e.g. {constraint: a100, exclude: node7}",
                                      default_factory=dict))

    def __post_init__(self):
        for key, least in (("gpus_per_job", 0), ("cpus_per_job", 1), ("time_min", 1), ("array_parallelism", 1)):
            check_count(f"cluster.{key}", getattr(self, key), least)
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise ConfigError(f"cluster.mem_gb: expected a number > 0 or null, got {self.mem_gb}")


@dataclass
class AblationSpec:
    name: str = field(**option("ablation name (default: the file name)", default="ablation"))
    description: str = field(**option("free text", default=""))
    base: str = field(**option("recipe every cell starts from, relative to this file", default="quickstart.yaml"))
    set: list[str] = field(**option("key=value overrides for every cell", default_factory=list))
    tasks: list[dict] = field(**option("target tasks: label + description + set (none: the base recipe's task)",
                                       default_factory=list))
    grid: GridSection = field(**option("the strategies x sigma x seeds grid", default_factory=GridSection))
    baselines: list[dict] = field(**option("parameter-matched baselines: label + method", default_factory=list))
    plots: dict = field(**option("which strategies the neurons-per-adapter plots compare", default_factory=dict))
    cluster: ClusterSection = field(**option("where the cells run (prunekit ablate --launcher and its options "
                                             "override it)", default_factory=ClusterSection))
    source: Optional[str] = field(default=None, metadata={"help": "file read", "internal": True})

    def __post_init__(self):
        g = self.grid
        if not g.strategies or not g.sigma_targets or not g.seeds:
            raise ConfigError("grid: strategies, sigma_targets and seeds must each list at least one value")
        for s in g.strategies:
            try:
                get_strategy(s)
            except KeyError as e:
                raise ConfigError(f"grid.strategies: {e}") from None
        bad_seeds = [s for s in g.seeds if not 0 <= s <= SEED_MAX]
        if bad_seeds:
            raise ConfigError(f"grid.seeds: expected integers in 0 .. {SEED_MAX} (as train.seed), got {bad_seeds}")
        bad = [s for s in g.sigma_targets if not s > g.sigma0]
        if bad:
            raise ConfigError(f"grid.sigma_targets: every target must exceed grid.sigma0={g.sigma0:g}, got {bad}")
        for key in ("oneshot_sigma_targets", "vanilla_sigma_targets"):
            sub = getattr(g, key)
            if sub is None:
                setattr(g, key, list(g.sigma_targets))
                continue
            outside = [s for s in sub if s not in g.sigma_targets]
            if not sub or outside:
                raise ConfigError(f"grid.{key}: expected a non-empty subset of grid.sigma_targets "
                                  f"{[float(s) for s in g.sigma_targets]}, got {sub}")
        self.baselines = [parse_section(BaselineSection, b, f"baselines[{i}]") for i, b in enumerate(self.baselines)]
        self.tasks = [parse_section(TaskSection, t, f"tasks[{i}]") for i, t in enumerate(self.tasks)]
        for i, t in enumerate(self.tasks):
            if not TASK_LABEL.fullmatch(t.label) or t.label == MEAN:
                raise ConfigError(f"tasks[{i}].label: expected letters, digits, '_' and '-' (not {MEAN!r}, the "
                                  f"aggregate's name), got {t.label!r}")
        twice = sorted(k for k, n in Counter(t.label for t in self.tasks).items() if n > 1)
        if twice:
            raise ConfigError(f"tasks: every label must be unique, {twice} appear more than once")
        self.plot = parse_section(PlotSection, self.plots, "plots")
        for i, s in enumerate(self.plot.stage_strategies):
            if s not in g.strategies:
                raise ConfigError(f"plots.stage_strategies[{i}]: {s!r} is not in grid.strategies ({g.strategies})")
        if not self.plot.stage_strategies:
            self.plot.stage_strategies = [s for s in (self.plot.global_strategy, self.plot.local_strategy)
                                          if s in g.strategies]

    @property
    def task_labels(self) -> list[str]:
        """The tasks' labels; one empty label when the file names no tasks (the base recipe's task)."""
        return [t.label for t in self.tasks] or [""]

    def task_overrides(self, label: str) -> list[str]:
        """Overrides every cell of the task starts with: the file's ``set``, then the task's."""
        return list(self.set) + next((list(t.set) for t in self.tasks if t.label == label), [])


def is_ablation_file(path: str | Path) -> bool:
    """Whether ``path`` is a readable YAML mapping with a ``grid`` (an ablation file rather than a recipe)."""
    try:
        data = read_yaml(path, "ablation")
    except ConfigError:
        return False
    return isinstance(data, dict) and "grid" in data


def load_ablation(path: str | Path) -> AblationSpec:
    """Read and validate an ablation file (UTF-8 YAML, strict keys, like a recipe)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation: no such file {str(path)!r}")
    data = read_yaml(path, "ablation")
    if data is None:
        raise ConfigError(f"ablation {str(path)!r} is empty (no YAML document); it names a base recipe and a grid "
                          "(see recipes/ablation_offline.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping (base:, grid:, ...) at the top level, got "
                          f"{type(data).__name__} {data!r:.60}")
    data.setdefault("name", path.stem)
    spec = parse_section(AblationSpec, data)
    spec.source = str(path.resolve())
    return spec
