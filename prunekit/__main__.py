"""``python -m prunekit`` (also what ``torchrun ... -m prunekit run RECIPE`` calls)."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="prunekit")
