"""Shared helpers for the benchmarks: timing, the machine's description, JSON results."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: checks the script runs")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: bench/results/<name>.json)")
    return p


def device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn: Callable[[], Any], dev: torch.device, repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict[Any, Callable[[], Any]], rounds: int) -> dict[Any, float]:
    """Median seconds of every ``fns[k]()`` over ``rounds`` rounds, each round calling every function once (so drift
    of a shared machine hits all of them alike), after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def machine(dev: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": sys.version.split()[0], "device": str(dev)}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def write(name: str, payload: dict[str, Any], out: Path | None, dev: torch.device) -> Path:
    payload = {"benchmark": name, "machine": machine(dev), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               **payload}
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps({k: v for k, v in payload.items() if k != "machine"}, indent=1))
    return path


def small_vit(dim: int = 192, depth: int = 6, classes: int = 10, img: int = 32):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, patch_size=4, embed_dim=dim,
                             depth=depth, num_heads=3, num_classes=classes)


QUICKSTART_RUN = RESULTS / "runs" / "quickstart"  # a finished `prunekit run quickstart`, reused by the benchmarks
QUICK_OVERRIDES = ("train.epochs=1", "train.warmup_epochs=0", "train.max_steps_per_epoch=2", "model.checkpoint=null",
                   "model.pretrain=null", "model.allow_random_backbone=true", "output.plot=false")


def quickstart_run(quick: bool, scratch: Path | None = None) -> Path:
    """The run directory of a finished quickstart run: the trained TINA cycles the benchmarks measure.

    Full: ``prunekit run quickstart --out bench/results/runs/quickstart``, run once (about 2 minutes on 2 cores with
    the cached backbone checkpoint; the pretraining first if it is not cached) and reused while its ``DONE`` is there.
    Quick (``--quick``, the tests): a one-epoch, two-step run on a random backbone in ``scratch``; it checks the code
    path, its figures mean nothing.
    """
    out = (scratch / "quickstart") if quick else QUICKSTART_RUN
    if (out / "DONE").exists():
        return out
    cmd = [sys.executable, "-m", "prunekit", "run", "quickstart", "--out", str(out)]
    if out.exists():
        cmd.append("--overwrite")  # prunekit replaces only a run directory it wrote, never anything else
    for o in QUICK_OVERRIDES if quick else ():
        cmd += ["--set", o]
    print("running", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quick else None)
    return out


def run_cycles(run_dir: Path) -> list[dict[str, Any]]:
    """The ``cycle`` lines of a run's metrics.jsonl (one per trained cycle)."""
    lines = (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip())
    return [m for m in lines if m.get("type") == "cycle"]


def strip_adapters(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every adapter wrapper replaced by its bare sub-layer (the backbone alone), in place."""
    from prunekit.adapters.layers import AdapterLayer
    from prunekit.core.wrapper import set_submodule

    for name, mod in list(model.named_modules()):
        if isinstance(mod, AdapterLayer):
            set_submodule(model, name, mod.base_layer)
    return model
