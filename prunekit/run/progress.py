"""Progress display: rich bars on a terminal, one plain line per epoch elsewhere (CI logs, pipes)."""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["ProgressReporter", "make_console"]


def make_console(quiet: bool = False) -> Console:
    return Console(file=sys.stdout, quiet=quiet, highlight=False, soft_wrap=True)


class ProgressReporter:
    """Reports cycles, epochs and steps; the trainer calls it, nothing else depends on it.

    Args:
        console: where to print.
        enabled: False for non-zero ranks in distributed runs (they print nothing).
    """

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or make_console()
        self.enabled = enabled
        self.rich = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._cycle = (0, 1)
        self._t0 = time.perf_counter()

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def start_cycle(self, cycle: int, cycles: int, info: str = "") -> None:
        """A cycle starts: ``cycle 2 of 0..3`` (a run of one cycle, a pretraining, says ``training``)."""
        self._cycle = (cycle, cycles)
        head = "training" if cycles == 1 else f"cycle {cycle} of 0..{cycles - 1}"
        self.log(f"[bold]{head}[/bold] {info}".rstrip())

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch = (epoch, epochs)
        self._t0 = time.perf_counter()
        if not self.rich:
            return
        self._progress = Progress(
            TextColumn("cycle {task.fields[cycle]} epoch {task.fields[epoch]}"), BarColumn(), TextColumn("step"),
            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}  train acc {task.fields[acc]}  "
                                             "{task.fields[ips]} img/s  elapsed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, cycle=self._cycle[0], epoch=f"{epoch + 1}/{epochs}",
                                             loss="-", acc="-", ips="-")

    def step(self, loss: float, acc: float, images_per_s: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", acc=f"{100 * acc:.1f}%",
                                  ips=f"{images_per_s:.0f}")

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        m = metrics
        self.log(f"cycle {m['cycle']} epoch {m['epoch'] + 1}/{self._epoch[1]}  loss {m['train_loss']:.4f}  "
                 f"train acc {100 * m['train_acc']:.2f}  val acc {100 * m['val_acc']:.2f}  "
                 f"lr {m['lr']:.2e}  {m['images_per_s']:.0f} img/s  {m['epoch_time_s']:.1f}s")
