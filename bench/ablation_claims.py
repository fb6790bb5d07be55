"""The numbers behind docs/reproduction.md's verdicts, from an ablation's ``cells.csv`` (``prunekit ablate`` output).

For every claim of the paper it prints, as markdown, paired differences of top-1 between two rows of the grid at the
same σ target: the same task and seed give both cells the same data order and initial adapters, so the difference
is taken per (task, seed) and then averaged; with it, how many of the pairs have the claimed sign, the mean per task,
the σ each row reached, its trainable parameters and the verdict by the rule of :func:`verdict` (a claim is only
judged where the σ reached is the same). Then
the accuracy-against-parameters table (mean over tasks and seeds) and the adapters each strategy empties per stage.

    python bench/ablation_claims.py docs/img/ablation_swin_offline/cells.csv > /tmp/claims.md

Reads the file only; the rows it compares are the Table 3 strategies of ``recipes/ablation_swin_offline.yaml``
(pairs whose rows are not in the file are skipped).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from collections import defaultdict

# (claim, [(row a, row b)]): a is the row the paper says is better
CLAIMS = [
    ("iterative > one-shot", [("tina", "global_scaled_oneshot"), ("global_unscaled_iterative", "global_unscaled"),
                              ("local_l1", "local_l1_oneshot")]),
    ("global > local", [("tina", "local_l1"), ("global_unscaled_iterative", "local_l1"),
                        ("global_scaled_oneshot", "local_l1_oneshot")]),
    ("scaling by 1/(n+m) helps", [("tina", "global_unscaled_iterative"), ("global_scaled_oneshot", "global_unscaled")]),
    ("Eq. 2 score > activation score (global L1(a))", [("tina", "global_activation")]),
    ("L1 of down + up > down only (vanilla L1)", [("local_l1_oneshot", "vanilla_l1")]),
    ("TINA >= vanilla adapters", [("tina", "vanilla_adapters")]),
]
STAGE = re.compile(r"layers\.(\d+)\.")


def read(path: str) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["top1"] = 100 * float(r["top1"])
        r["trainable"] = int(float(r["trainable"]))
        r["sigma"] = float(r["sigma"]) if r.get("sigma") not in (None, "", "None") else float("nan")
        r["sigma_target"] = float(r["sigma_target"]) if r["sigma_target"] not in ("", "nan") else float("nan")
        r["widths"] = json.loads(r["widths"]) if r.get("widths") else {}
        r.setdefault("task", "")
    return rows


def index(rows: list[dict]) -> dict:
    return {(r["task"], r["row"], r["sigma_target"], int(r["seed"])): r for r in rows}


def fmt(x: float) -> str:
    return f"{x:+.2f}"


def _neurons(cells) -> str:
    """Mean neurons left in all adapters ('-' for an unpruned row, whose cells record no widths)."""
    counts = [sum(c["widths"].values()) for c in cells if c["widths"]]
    return f"{statistics.fmean(counts):.1f}" if counts else "-"


def paired(cells: dict, a: str, b: str, sigma: float) -> dict | None:
    keys = sorted({(t, s) for (t, row, sig, s) in cells if row == a and sig == sigma})
    pairs = [(cells[(t, a, sigma, s)], cells[(t, b, sigma, s)]) for t, s in keys if (t, b, sigma, s) in cells]
    if not pairs:
        return None
    diffs = [x["top1"] - y["top1"] for x, y in pairs]
    by_task = defaultdict(list)
    for (x, _), d in zip(pairs, diffs):
        by_task[x["task"]].append(d)
    return {"n": len(diffs), "mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0,
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
            "by_task": {t: statistics.fmean(v) for t, v in by_task.items()},
            "sigma": (statistics.fmean(x["sigma"] for x, _ in pairs), statistics.fmean(y["sigma"] for _, y in pairs)),
            "neurons": (_neurons(x for x, _ in pairs), _neurons(y for _, y in pairs)),
            "params": (statistics.fmean(x["trainable"] for x, _ in pairs),
                       statistics.fmean(y["trainable"] for _, y in pairs))}


def verdict(p: dict, equal: bool) -> str:
    """The page's rule: *held* when the mean difference has the claimed sign, so does every task's mean, and at
    least 7 of 9 pairs (the same share of fewer) do; *reversed* when all of that holds with the opposite sign;
    *no consistent difference* otherwise. Cells at unequal sigma are not judged."""
    if not equal:
        return "not judged (unequal σ)"
    need = -(-7 * p["n"] // 9)  # 7 of 9, rounded up for other counts
    tasks = list(p["by_task"].values())
    if p["mean"] > 0 and all(t > 0 for t in tasks) and p["wins"] >= need:
        return "held"
    losses = p["n"] - p["wins"] - p["ties"]
    if p["mean"] < 0 and all(t < 0 for t in tasks) and losses >= need:
        return "reversed"
    return "no consistent difference"


def claims(rows: list[dict]) -> list[str]:
    cells = index(rows)
    sigmas = sorted({r["sigma_target"] for r in rows if r["sigma_target"] == r["sigma_target"]})
    out = ["## Paired differences (a − b, top-1 points; per task and seed, then averaged)", "",
           "| claim | a − b | σ | mean ± std | pairs a > b | per task | σ reached a / b | neurons a / b | "
           "trainable a / b | verdict |", "|---|---|---:|---:|---:|---|---|---|---|---|"]
    for claim, pairs in CLAIMS:
        for a, b in pairs:
            for s in sigmas:
                p = paired(cells, a, b, s)
                if p is None:
                    continue
                same = abs(p["sigma"][0] - p["sigma"][1]) < 1e-6 if p["sigma"][1] == p["sigma"][1] else False
                reached = f"{p['sigma'][0]:.1f} / " + (f"{p['sigma'][1]:.1f}" if p["sigma"][1] == p["sigma"][1]
                                                        else "(unpruned)")
                out.append(f"| {claim} | {a} − {b} | {s:g} | {fmt(p['mean'])} ± {p['std']:.2f} | "
                           f"{p['wins']} of {p['n']}" + (f" ({p['ties']} tied)" if p["ties"] else "") + " | "
                           + ", ".join(f"{t} {fmt(v)}" for t, v in p["by_task"].items()) + f" | {reached}"
                           + ("" if same else " **unequal**") + f" | {p['neurons'][0]} / {p['neurons'][1]} | "
                           f"{p['params'][0]:,.0f} / {p['params'][1]:,.0f} | {verdict(p, same)} |")
    return out + [""]


def accuracy_vs_params(rows: list[dict]) -> list[str]:
    groups = defaultdict(list)
    for r in rows:
        label = r["row"] if r["sigma_target"] != r["sigma_target"] else f"{r['row']} σ={r['sigma_target']:g}"
        groups[label].append(r)
    table = []
    for label, rs in groups.items():
        per_seed = defaultdict(list)
        for r in rs:
            per_seed[int(r["seed"])].append(r["top1"])
        seed_means = [statistics.fmean(v) for v in per_seed.values()]
        table.append((statistics.fmean(r["trainable"] for r in rs), label, statistics.fmean(r["top1"] for r in rs),
                      statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
                      sorted({int(r["epochs"]) for r in rs})))
    out = ["## Top-1 against trainable parameters (mean over tasks and seeds; ± std over seeds of the task mean)", "",
           "| row | trainable | top-1 (%) | epochs |", "|---|---:|---:|---:|"]
    out += [f"| {label} | {p:,.0f} | {m:.2f} ± {sd:.2f} | {'/'.join(map(str, ep))} |"
            for p, label, m, sd, ep in sorted(table)]
    return out + [""]


def stages(rows: list[dict]) -> list[str]:
    """Adapters emptied and neurons left per stage, mean over tasks and seeds, for every pruned row and sigma."""
    acc = defaultdict(lambda: defaultdict(list))
    names = set()
    for r in rows:
        if not r["widths"]:
            continue
        per = defaultdict(lambda: [0, 0, 0])  # adapters, emptied, neurons
        for k, n in r["widths"].items():
            m = STAGE.search(k)
            st = int(m.group(1)) if m else 0
            per[st][0] += 1
            per[st][1] += n == 0
            per[st][2] += n
        for st, v in per.items():
            acc[(r["row"], r["sigma_target"])][st].append(v)
            names.add(st)
    st_names = sorted(names)
    out = ["## Adapters emptied / neurons left per stage (mean over tasks and seeds)", "",
           "| row | σ | " + " | ".join(f"stage {s}: emptied of adapters, neurons" for s in st_names) + " |",
           "|---|---:|" + "---|" * len(st_names)]
    for (row, s), per in sorted(acc.items()):
        cols = []
        for st in st_names:
            v = per.get(st, [])
            if not v:
                cols.append("-")
                continue
            emptied, neurons = statistics.fmean(x[1] for x in v), statistics.fmean(x[2] for x in v)
            cols.append(f"{emptied:.1f} of {v[0][0]}, {neurons:.1f}")
        out.append(f"| {row} | {s:g} | " + " | ".join(cols) + " |")
    return out + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", help="cells.csv of a prunekit ablate run")
    args = p.parse_args()
    rows = read(args.cells)
    print("\n".join(claims(rows) + accuracy_vs_params(rows) + stages(rows)))


if __name__ == "__main__":
    main()
