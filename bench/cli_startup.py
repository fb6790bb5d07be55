"""CLI start-up: wall time of commands that need no model, against the bare interpreter (`python -c pass`).

`prunekit --help`, `prunekit list strategies` and a recipe with a schema error must answer without importing torch,
timm, torch-pruning or matplotlib; `prunekit list scorers` (whose registry lives with torch code) is measured beside
them to show what that import costs. Every command runs in a fresh process with this checkout on PYTHONPATH; the
commands are interleaved round by round, and the median of the rounds is reported.

    python bench/cli_startup.py --repeat 15
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import device, median, parser, write

ROOT = Path(__file__).resolve().parents[1]
GOAL_EXTRA_S = 0.5  # "well under a second" of start-up beyond the interpreter's


def commands(bad_recipe: Path) -> dict[str, list[str]]:
    py = [sys.executable]
    return {
        "python -c pass": py + ["-c", "pass"],
        "prunekit --help": py + ["-m", "prunekit", "--help"],
        "prunekit list strategies": py + ["-m", "prunekit", "list", "strategies"],
        "prunekit run BAD.yaml (schema error)": py + ["-m", "prunekit", "run", str(bad_recipe)],
        "prunekit list scorers (imports torch)": py + ["-m", "prunekit", "list", "scorers"],
    }


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, res.returncode


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=15, help="rounds (each command once per round)")
    args = p.parse_args()
    repeat = 2 if args.quick else args.repeat
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as d:
        bad = Path(d) / "bad.yaml"
        bad.write_text("trian: {epochs: 1}\n")
        cmds = commands(bad)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        codes: dict[str, int] = {}
        for name, argv in cmds.items():  # one untimed round: the file system cache, .pyc files
            codes[name] = run_once(argv, env)[1]
        for _ in range(repeat):
            for name, argv in cmds.items():
                times[name].append(run_once(argv, env)[0])
    base = median(times["python -c pass"])
    rows = {}
    for name, ts in times.items():
        m = median(ts)
        rows[name] = {"median_s": m, "ratio": m / base, "extra_s": m - base, "exit_code": codes[name],
                      "command": " ".join(["python"] + cmds[name][1:]).replace(str(bad), "BAD.yaml"),
                      "goal": name != "python -c pass" and "imports torch" not in name}
        print(f"{name:<40} {m:6.3f} s  {m / base:5.2f}x  (+{m - base:.3f} s)  exit {codes[name]}")
    met = all(r["extra_s"] < GOAL_EXTRA_S for r in rows.values() if r["goal"])
    write("cli_startup", {"repeat": repeat, "goal_extra_s": GOAL_EXTRA_S, "rows": rows, "met": met}, args.out,
          device("cpu"))


if __name__ == "__main__":
    main()
