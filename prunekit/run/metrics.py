"""Record, the metrics in other formats: ``metrics.csv`` (one row per cycle) and TensorBoard scalars.

``metrics.jsonl`` stays the record a run is checked and resumed from; these are views of it for spreadsheets and
TensorBoard. ``metrics.csv`` is rewritten (atomically, through the run directory) after every cycle: one row per
finished cycle, every scalar of the cycle's record as a column (keys added to the record later, such as MACs or
latency, become columns by themselves) plus ``adapters`` / ``adapters_total`` / ``neurons`` counted from the widths.
``output.tensorboard: true`` also writes TensorBoard scalars under ``RUN_DIR/tensorboard/`` (``epoch/*`` per epoch,
``cycle/*`` per cycle); it needs the ``tensorboard`` package (``pip install 'prunekit[tensorboard]'``).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import math
from typing import Any, Sequence

from ..errors import ConfigError
from ..io.rundir import RunDir

__all__ = ["cycles_csv", "TensorBoardScalars", "check_tensorboard", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"
_NOT_COLUMNS = {"type", "widths", "rank_digests"}  # the widths become counts; digests are for distributed checks
_LEADING = ["cycle", "sigma", "adapters", "adapters_total", "neurons"]


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def cycles_csv(cycles: Sequence[dict[str, Any]]) -> str:
    """The cycle records of ``metrics.jsonl`` as CSV text, one row per cycle."""
    rows = []
    for c in cycles:
        row = {k: v for k, v in c.items() if k not in _NOT_COLUMNS and _is_scalar(v)}
        widths = c.get("widths") or {}
        if widths:
            row.update(adapters=sum(1 for w in widths.values() if w), adapters_total=len(widths),
                       neurons=sum(widths.values()))
        rows.append(row)
    columns = [k for k in _LEADING if any(k in r for r in rows)]
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def check_tensorboard() -> None:
    """``output.tensorboard: true`` needs the ``tensorboard`` package: a named error before anything runs."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("output.tensorboard: true needs the tensorboard package, which is not installed; "
                          "pip install 'prunekit[tensorboard]' (or set output.tensorboard: false)")


class TensorBoardScalars:
    """TensorBoard event files under ``RUN_DIR/tensorboard/``, listed in the run directory's manifest.

    TensorBoard names its event file when it creates it (time, host, process), so the file is added to the manifest
    right after the writer opens it, before any scalar is written. A resumed run adds a second event file; TensorBoard
    shows both as one run.

    Args:
        rundir: the run directory, open for writing.
        epochs_per_cycle: ``train.epochs``; the epoch scalars' step is ``cycle * epochs_per_cycle + epoch + 1``.
    """

    def __init__(self, rundir: RunDir, epochs_per_cycle: int):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        folder = rundir.path / TENSORBOARD_DIR
        before = set(folder.iterdir()) if folder.is_dir() else set()
        self.epochs_per_cycle = epochs_per_cycle
        self.writer = SummaryWriter(log_dir=str(folder))
        for path in sorted(set(folder.iterdir()) - before):
            rundir.adopt(path)

    def epoch(self, metrics: dict[str, Any]) -> None:
        step = metrics["cycle"] * self.epochs_per_cycle + metrics["epoch"] + 1
        self._scalars("epoch", metrics, step, skip=("cycle", "epoch", "steps"))

    def cycle(self, summary: dict[str, Any]) -> None:
        widths = summary.get("widths") or {}
        extra = {"neurons": sum(widths.values()), "adapters": sum(1 for w in widths.values() if w)} if widths else {}
        self._scalars("cycle", {**summary, **extra}, summary["cycle"], skip=("cycle",))
        self.writer.flush()

    def _scalars(self, prefix: str, values: dict[str, Any], step: int, skip: Sequence[str]) -> None:
        for key, value in values.items():
            if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()
