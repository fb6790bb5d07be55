"""Write docs/benchmarks.md from bench/results/*.json (called by run_all.py)."""
from __future__ import annotations

import json
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _load(results: Path, name: str) -> dict | None:
    p = results / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _command(result: dict) -> list[str]:
    """The command that wrote ``result``, as a bash block (and the blank line after it)."""
    return ["```bash", f"python bench/{result['command']}", "```", ""]


def _mark(met: bool) -> str:
    return "met" if met else "**missed**"


def write_report(results: Path) -> Path:
    parts = ["# Benchmarks", "",
             "Every figure below was measured by the scripts in `bench/` and is rewritten by them; ratios are measured "
             "side by side in one run. Speed and memory targets live here, never in timed tests.", "",
             "```bash", "python bench/run_all.py                 # every benchmark on CPU, then this page (about 10 "
             "min on 2 cores)", "python bench/run_all.py --device cuda   # the GPU variant",
             "python bench/train_throughput.py        # or one at a time; each prints its ratios and writes "
             "bench/results/<name>.json", "```", ""]
    tt = _load(results, "train_throughput")
    if tt:
        m = tt["machine"]
        parts += [f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
                  f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}.", ""]
        ips = tt["images_per_s"]
        parts += ["## 1. Training throughput: prunekit's loop vs a bare PyTorch loop", "",
                  f"ViT (32 px, patch 4, dim 192, depth 6) with sigma-8 adapters, batch {tt['batch']}, data in memory, "
                  f"{tt['rounds']} alternating rounds of {tt['steps_per_epoch']} steps.", "",
                  "| loop | images/s |", "|---|---:|", f"| prunekit `Trainer` | {ips['prunekit']:.1f} |",
                  f"| bare loop | {ips['bare']:.1f} |", "",
                  f"Ratio prunekit / bare: **{tt['ratio']:.3f}** (goal >= 0.95: {_mark(tt['met'])}).", ""]
    po = _load(results, "prune_overhead")
    if po:
        parts += ["## 2-3. Pruning overhead and group discovery", "",
                  "*Engine overhead per cycle*: a real `Engine` runs a whole TINA schedule (Eq. 2, global, rho 0.5, "
                  "3 prunes) with a `train_fn` that does nothing; its wall time, construction included (the first "
                  "trace, the budget check, the cycle count), divided by the number of prunes, is everything the "
                  "engine adds to a cycle. The goal compares it with one training epoch. The other columns take one "
                  "prune step apart: trace the dependency graph and find the adapter groups, score with Eq. 2, select "
                  "globally, slice, rebuild the optimizer.", "",
                  "| model | engine overhead per cycle (ms) | groups (ms) | score (ms) | select (ms) | slice (ms) | "
                  "optimizer (ms) | prune step (ms) | epoch (s) | overhead / epoch | goal < 1 % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, s in po["scenarios"].items():
            p, e = s["prune_seconds"], s["engine_overhead_seconds"]
            parts.append(f"| {name} | {1e3 * e['per_prune']:.1f} | {1e3 * p['groups']:.1f} | {1e3 * p['score']:.1f} | "
                         f"{1e3 * p['select']:.2f} | {1e3 * p['slice']:.1f} | {1e3 * p['optimizer']:.1f} | "
                         f"{1e3 * p['total']:.1f} | {s['epoch_seconds']:.1f} | {100 * s['share_of_epoch']:.4f} % | "
                         f"{_mark(s['met'])} |")
        parts += ["", "Epochs: " + "; ".join(f"{n}: {s['epoch_how']}" for n, s in po["scenarios"].items()) + ".", "",
                  "Group discovery alone (`adapter_groups`: torch-pruning traces the whole model once): " +
                  ", ".join(f"{n} {1e3 * s['group_discovery_seconds']:.0f} ms ({s['groups']} groups)"
                            for n, s in po["scenarios"].items()) + ".", ""]
    inf = _load(results, "inference")
    if inf:
        parts += ["## 4. Inference: backbone, adapters, TINA cycles", "",
                  "Emptied adapters are removed, so each cycle's model gets closer to the bare backbone. Rows marked "
                  "*trained* are the cycles of a real quickstart run (`prunekit run quickstart`, 10 epochs per cycle, "
                  "rebuilt with `load_run`); rows marked *untrained* apply a real TINA schedule (rho 0.5, Eq. 2, "
                  "global) **without any training** to adapters whose `up` weights are random and scaled by a random "
                  "factor per adapter: which adapters survive there is arbitrary, only the schedule's widths are "
                  "real. Swin-T has untrained rows only (it cannot be trained on this CPU).", ""]
        for name, rows in inf["scenarios"].items():
            parts += [f"**{name}**", "", "| model | latency, batch 1 (ms) | throughput (img/s) | vs backbone |",
                      "|---|---:|---:|---:|"]
            parts += [f"| {r['model']} | {r['latency_ms']:.2f} | {r['images_per_s']:.1f} | "
                      f"{r['throughput_vs_backbone']:.3f} |" for r in rows]
            base, full, last = rows[0], rows[1], rows[-1]
            parts += ["", f"Batch-1 latency over the backbone's: {full['latency_ms'] / base['latency_ms']:.2f}x with "
                      f"every adapter, {last['latency_ms'] / base['latency_ms']:.2f}x after the last cycle; "
                      f"throughput (large batch) {full['throughput_vs_backbone']:.2f}x and "
                      f"{last['throughput_vs_backbone']:.2f}x of the backbone's. Single figures move by about 0.1 "
                      "between runs on this shared machine (a ratio above 1 is that noise, not a speed-up). Where "
                      "the batch-1 latency stays "
                      "above the backbone's, the remaining adapters' cost is per-call overhead (two small matmuls "
                      "and the wrapper's Python call per adapter), which is large next to a 96-wide model's "
                      "blocks and negligible next to Swin-T's.", ""]
    tc = _load(results, "train_cost")
    if tc:
        parts += ["## 5. Training cost: frozen backbone + adapters vs full fine-tuning", "",
                  "The backward pass still crosses the frozen backbone (it must reach the early adapters); what "
                  "adapters save is the weight gradients and the optimizer state of the backbone.", "",
                  "| model | batch | step, adapters (s) | step, full (s) | ratio | peak memory, adapters (MiB) | "
                  "peak memory, full (MiB) | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, r in tc["models"].items():
            parts.append(f"| {name} | {r['batch']} | {r['adapters']['step_seconds']:.3f} | "
                         f"{r['full']['step_seconds']:.3f} | {r['step_time_ratio_adapters_over_full']:.2f} | "
                         f"{r['adapters']['peak_bytes'] / 2**20:.0f} | {r['full']['peak_bytes'] / 2**20:.0f} | "
                         f"{r['peak_memory_ratio_adapters_over_full']:.2f} |")
        parts += ["", "CPU peak memory is the growth of the process's peak resident set during the steps (each "
                  "configuration in its own process); on CUDA it is `torch.cuda.max_memory_allocated`.", ""]
    st = _load(results, "storage")
    if st:
        parts += ["## 6. Storage per task", "", "Adapters + head, written with safetensors, after each TINA cycle, "
                  "against one full fine-tuned copy of the model. *Trained* rows are the files a real quickstart run "
                  "wrote (the offline ViT, sigma 8 -> 64, 10 epochs per cycle; the full model is that run's backbone "
                  "and head). *Untrained* rows (Swin-T, ViT-B/16, sigma 32 -> 512) apply a real TINA schedule "
                  "**without any training** to random adapter weights: the file sizes follow the schedule's widths, "
                  "but which adapters survive is arbitrary.", ""]
        for name, rows in st["scenarios"].items():
            parts += [f"**{name}** (full model: {rows[0]['full_model_bytes'] / 2**20:.1f} MB)", "",
                      "| trained file | bytes | smaller than the full model | adapters left |", "|---|---:|---:|---:|"]
            parts += [f"| {r['model']} | {r['bytes']:,} | {r['smaller_by']:.0f}x | {r['adapters_left']} |"
                      for r in rows]
            parts.append("")
    for name, section in (("vs_torch_pruning", _vs_torch_pruning), ("cli_startup", _cli_startup),
                          ("load_time", _load_time), ("export_latency", _export_latency),
                          ("latency_budget", _latency_budget), ("recovery", _recovery), ("tasks", _tasks)):
        result = _load(results, name)
        if result:
            parts += section(result)
    text = "\n".join(parts) + "\n"
    DOC.write_text(_carry_hand_written(text, DOC.read_text() if DOC.exists() else ""))
    return DOC


HAND_WRITTEN = ("## 7b.",)  # sections written by hand from their JSON: carried over, after the section before them


def _carry_hand_written(new: str, old: str) -> str:
    """``new`` with the hand-written sections of ``old`` put back after the section that preceded them there."""
    for head in HAND_WRITTEN:
        start = old.find(head)
        if start < 0 or head in new:
            continue
        end = old.find("\n## ", start + len(head))
        section = old[start:] if end < 0 else old[start:end + 1]
        before = old.rfind("\n## ", 0, start)
        prev = old[before + 1:old.find("\n", before + 1)] if before >= 0 else None
        at = new.find(prev) if prev else -1
        if at < 0:
            new = new.rstrip("\n") + "\n\n" + section
            continue
        nxt = new.find("\n## ", at + len(prev))
        new = new + "\n" + section if nxt < 0 else new[:nxt + 1] + section + new[nxt + 1:]
    return new


def _latency_budget(lb: dict) -> list[str]:
    """Section 11: a latency budget against a MACs budget (bench/latency_budget.py)."""
    met = [r for r in lb["rows"] if r["budget"] == "latency"]
    return ["## 11. A latency budget against a MACs budget", "",
            f"Three models pretrained on Fashion-MNIST at 32 px (bench/fmnist.py), each pruned with "
            f"`prune(..., ratio={lb['ratio']:g}, target=\"latency\", latency=LatencyMeter(batch_size={lb['batch']}, "
            f"threads=1))` and with `target=\"macs\"` (scorer `l1_mean`). Latency: the unpruned and both pruned "
            f"models side by side, one forward of {lb['batch']} images each per round, {lb['rounds']} rounds, one "
            f"thread, the median. Top-1 on 3,000 test images after the same recovery ({lb['epochs']} epochs on 5,000 "
            "training images).", "", *_command(lb), lb["table"], "",
            "Latency target met within ±10 % (median of interleaved runs): "
            + ", ".join(f"{r['arch']} {r['latency_kept']:.3f}x ({_mark(r['within_10pct'])})" for r in met) + ".", ""]


def _recovery(rc: dict) -> list[str]:
    """Section 12: the recovery benchmark's latency and prune-time columns (its accuracy reading is in
    docs/generic-pruning.md)."""
    return ["## 12. Recovery benchmark: criteria, distillation, torch-pruning, ModelOpt", "",
            f"{rc['arch']} pretrained on Fashion-MNIST at 32 px (top-1 {100 * rc['pretrained_top1']:.2f} % on "
            f"{rc['test_images']:,} test images), pruned to 1/2, 1/4 and 1/8 of its MACs, recovered for "
            f"{rc['epochs']} epochs on {rc['recovery_images']:,} training images, {rc['seeds']} seeds "
            f"({rc['seconds'] / 60:.0f} min in all). docs/generic-pruning.md reads the accuracy; latency: batch 1 "
            "and 32, one thread, every model of a budget and seed interleaved, 20 rounds, the median.", "",
            *_command(rc), rc["table"], "", *[f"- {v}" for v in rc["verdicts"]], ""]


def _tasks(tk: dict) -> list[str]:
    """Section 13: many tasks on one backbone (bench/tasks.py)."""
    mem, tp, sv = tk["memory"], tk["throughput"], tk["serving"]
    top = mem[-1]
    mixed = [t["mixed_cost_over_one_task"] for t in tp]
    one = {t["batch"]: t["images_per_s"]["one_task"] for t in tp if t["tasks"] == 1}
    small, big = min(one), max(one)
    def ms(side: str, key: str) -> str:
        return ", ".join(f"{s[side][key]:.0f}" for s in sv)

    lead, at_big = (", ".join(f"{t['shared_over_separate']:.2f}x at {t['tasks']}" for t in tp
                              if t["batch"] == b and t["tasks"] > 1) for b in (small, big))
    return ["## 13. Many tasks, one backbone: memory, mixed batches, serving", "",
            f"The quickstart's ViT (32 px, dim {tk['dim']}, depth 6, random weights) with random series adapters at "
            f"the quickstart's widths ({tk['positions']} positions, each task at a TINA cycle: 144, 72, 36 or 18 "
            f"neurons in all, some adapters emptied) and a 10-class head per task. *Memory*: `MultiTaskModel` (one "
            f"backbone + N tasks) against N single-task models, each built in a fresh process. *Throughput*: mixed "
            f"batches (each image of a random task) through one backbone pass, against every task's images through "
            f"that task's own model; one thread, {tk['rounds']} interleaved rounds, the median; *time: mixed / one "
            f"task* is the shared model's time on a mixed batch over its time on a batch of one task. *Serving*: the "
            f"routes and batcher of `prunekit serve` on uvicorn (one torch thread), {sv[0]['clients']} concurrent "
            f"local clients, {sv[0]['requests']} PNG uploads of random tasks per configuration; batching = max batch "
            f"32, 5 ms wait; "
            "none = max batch 1.", "", *_command(tk), tk["table"], "",
            f"At {top['tasks']} tasks the tensors take {top['tensor_ratio']:.1f}x less memory on one backbone "
            f"({top['shared']['tensor_bytes'] / 2**20:.1f} MB against {top['separate']['tensor_bytes'] / 2**20:.0f} "
            f"MB; resident set {top['rss_ratio']:.1f}x). A mixed batch costs {min(mixed):.2f}-{max(mixed):.2f}x a "
            f"one-task batch of the same size. Against one model per task, mixed batches of {small} run {lead} "
            f"tasks; at batch {big}: {at_big} tasks (the per-task models then run sub-batches of {big}/N; one model "
            f"runs {one[small]:.0f} images/s at batch {small} and {one[big]:.0f} at batch {big}). Batching in the "
            "server gives " + ", ".join(f"{s['throughput_ratio']:.2f}x" for s in sv) + " the requests per second of "
            f"no batching (at {', '.join(str(s['tasks']) for s in sv)} tasks); its p50 is {ms('batching', 'p50_ms')} "
            f"ms against {ms('no_batching', 'p50_ms')} ms, its p99 {ms('batching', 'p99_ms')} ms against "
            f"{ms('no_batching', 'p99_ms')} ms.", ""]


def _vs_torch_pruning(vs: dict) -> list[str]:
    """Section 7: ``prunekit.prune`` against torch-pruning's global pruner (bench/vs_torch_pruning.py)."""
    big, sides = vs["big_batch"], ("prunekit", "torch-pruning")
    m = vs["machine"]
    parts = ["## 7. Prune any model: prunekit vs torch-pruning", "",
             f"`prunekit.prune(model, x, ratio={vs['ratio']}, target=\"params\")` against torch-pruning's "
             "`BasePruner` (`GroupMagnitudeImportance`, `global_pruning=True`, the classifier ignored, `num_heads` "
             "for timm attention as its ViT example does), each on a copy of the same randomly initialised model "
             f"(10 classes, the input size in the table). Both remove {100 * vs['ratio']:.0f} % of the parameters: "
             "torch-pruning's `pruning_ratio` is a channel ratio, so it is bisected on copies until it is within 1 % "
             "of the target. *handled*: pruned without an error, forward works, output shape unchanged. *prune (s)*: "
             f"one call, the median of {vs.get('calls', 1)} on fresh copies after a warm-up (prunekit: an untimed "
             "call; torch-pruning: the bisection), the two sides alternating call by call so that a busy moment of "
             "the machine hits both, Python's garbage collected before each timed call (so that no call pays the "
             "cyclic collector for the copying or for the other side's call); for torch-pruning the pruner's "
             "construction and `step()` at the "
             "ratio found, in brackets with the bisection a user needs to hit a parameter budget. *latency*: pruned "
             "model over the "
             f"unpruned one, median of {vs['repeat']} repeats, the three models interleaved in one loop, "
             f"batch 1 / batch {big}, {m['torch_threads']} torch thread(s) on {m['cpu']}.", "",
             "```bash", f"OMP_NUM_THREADS={m['torch_threads']} python bench/{vs['command']}", "```", "",
             "| model | input | params | prunekit: params / MACs removed | torch-pruning: params / MACs removed | "
             "prune (s), prunekit | prune (s), torch-pruning | latency b1, prunekit | latency b1, torch-pruning | "
             f"latency b{big}, prunekit | latency b{big}, torch-pruning |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    failures = []
    for name, r in vs["models"].items():
        cells = {}
        for s in sides:
            x = r[s]
            if not x["handled"]:
                failures.append(f"{name}, {s}: `{x['error']}`")
                cells[s] = ("fails", "-", "-", "-")
                continue
            t = f"{x['seconds']:.2f}" + (f" ({x['seconds_with_search']:.1f})" if "seconds_with_search" in x else "")
            cells[s] = (f"{100 * x['params_removed']:.1f} % / {100 * x['macs_removed']:.1f} %", t,
                        f"{x['latency_ratio_b1']:.2f}", f"{x[f'latency_ratio_b{big}']:.2f}")
        a, b = cells["prunekit"], cells["torch-pruning"]
        parts.append(f"| {name} | {r['input']} | {r['params'] / 1e6:.2f} M | {a[0]} | {b[0]} | {a[1]} | {b[1]} | "
                     f"{a[2]} | {b[2]} | {a[3]} | {b[3]} |")
    ok = {s: [n for n, r in vs["models"].items() if r[s]["handled"]] for s in sides}
    both = [n for n in ok["prunekit"] if n in ok["torch-pruning"]]
    faster = [n for n in both if vs["models"][n]["prunekit"]["seconds"] <= vs["models"][n]["torch-pruning"]["seconds"]]
    searched = [n for n in both if vs["models"][n]["prunekit"]["seconds"]
                <= vs["models"][n]["torch-pruning"].get("seconds_with_search", float("inf"))]
    gm = {}
    for s in sides:
        for key in ("latency_ratio_b1", f"latency_ratio_b{big}", "macs_removed"):
            vals = [vs["models"][n][s][key] for n in both]
            gm[s, key] = _geomean(vals) if key != "macs_removed" else sum(vals) / len(vals)
    parts += ["", f"Handled: prunekit {len(ok['prunekit'])} of {len(vs['models'])}, torch-pruning "
              f"{len(ok['torch-pruning'])} of {len(vs['models'])}; every model torch-pruning handles, prunekit "
              f"handles: {_yes(set(ok['torch-pruning']) <= set(ok['prunekit']))}. One call as fast as or faster "
              f"than torch-pruning's single call: {len(faster)} of {len(both)} models"
              f"{' (' + ', '.join(faster) + ')' if faster else ''}; as fast as or faster than torch-pruning with the "
              f"bisection it needs to meet the same parameter budget: {len(searched)} of {len(both)}.", "",
              f"On the {len(both)} models both handle (geometric means of the latency ratios): prunekit removes "
              f"{100 * gm['prunekit', 'macs_removed']:.1f} % of the MACs on average, latency "
              f"{gm['prunekit', 'latency_ratio_b1']:.2f}x at batch 1 and "
              f"{gm['prunekit', f'latency_ratio_b{big}']:.2f}x at batch {big}; torch-pruning "
              f"{100 * gm['torch-pruning', 'macs_removed']:.1f} %, {gm['torch-pruning', 'latency_ratio_b1']:.2f}x and "
              f"{gm['torch-pruning', f'latency_ratio_b{big}']:.2f}x.",
              ""]
    if failures:
        parts += ["Failures (the error each side raised):", ""] + [f"- {f}" for f in failures] + [""]
    parts += ["Reading it: at the same parameter budget prunekit's global L1 takes more MACs than torch-pruning's "
              "(it ranks channels with large fan-in / fan-out, i.e. the high-resolution early layers, lower), and the "
              "latency follows the MACs at batch 32; at batch 1 on one thread small models are bound by per-layer "
              "overhead, so the gain is smaller than the MACs promise. Latency ratios are interleaved medians; on a "
              "shared machine single figures can move by 0.1-0.2 between runs. "
              "What one prunekit call does beyond torch-pruning's single step: it counts MACs with torch-pruning's "
              "formulas during the trace both tools make (no forward of its own) and after slicing (one forward, "
              "which is also the check that the pruned model still runs with the same output shapes), keeps a "
              "snapshot of every module's state for the undo (tensors shared, not copied), and searches its selection "
              "to meet the budget within one unit (a search over the number of units on one global ranking). "
              "Where it saves time over torch-pruning's own calls: it computes the graph's index mappings once while "
              "finding groups (torch-pruning recomputes every concatenation's for each group it builds, which "
              "weighs on DenseNet and GhostNet), and in a graph without concatenations or splits it prunes a group "
              "through its "
              "full-width torch-pruning group cut to the chosen channels instead of walking the graph again. Only "
              "where the units of one group really differ in cost (none of these models) is a selection's parameter "
              "count checked on a pruned copy. A "
              "model whose first attempt breaks pays a forward probe and a second attempt. Against torch-pruning "
              "with the bisection a user needs to hit the same parameter budget, prunekit's one call is the fair "
              "comparison.", ""]
    return parts


def _cli_startup(cs: dict) -> list[str]:
    """Section 8: how fast commands that need no model answer (bench/cli_startup.py)."""
    m = cs["machine"]
    parts = ["## 8. CLI start-up", "",
             "Commands that need no model (help, listing strategies, a recipe's schema error) answer before torch, "
             "timm, torch-pruning and matplotlib are imported; `list scorers`, whose registry lives with torch code, "
             f"is measured beside them. Wall time of a fresh process, median of {cs['repeat']} interleaved rounds, on "
             f"{m['cpu']} ({m['cores']} cores), Python {m['python']}.", "",
             *_command(cs),
             f"| command | median (s) | vs `python -c pass` | beyond the interpreter (s) | exit code | goal < "
             f"{cs['goal_extra_s']:g} s |", "|---|---:|---:|---:|---:|---|"]
    for name, r in cs["rows"].items():
        goal = _mark(r["extra_s"] < cs["goal_extra_s"]) if r["goal"] else "-"
        parts.append(f"| `{name}` | {r['median_s']:.3f} | {r['ratio']:.2f}x | {r['extra_s']:.3f} | {r['exit_code']} | "
                     f"{goal} |")
    return parts + [""]


def _load_time(lt: dict) -> list[str]:
    """Section 9: loading a pruned model without tracing (bench/load_time.py)."""
    m = lt["machine"]
    parts = ["## 9. Loading a pruned model: `load_pruned` vs a plain `load_state_dict`", "",
             "Each model loses 30 % of its parameters to `pk.prune` (random weights, one example image), is saved with "
             "`pk.save_pruned`, then loaded three ways, side by side in each of "
             f"{lt['repeat']} rounds (median), on models built beforehand: `state_dict` is `safetensors.torch."
             "load_file` + `load_state_dict(strict=True)` into a model that already has the pruned shapes (what "
             "`timm.create_model(**kwargs)` or `from_pretrained` then costs); `load_pruned` resizes a fresh unpruned "
             "model from the plans' records and loads the weights; `replay` is the same directory without the "
             "records (files of earlier versions: trace, find the groups, replay). "
             f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads.", "",
             *_command(lt),
             "| model | weights (MB) | prune (s) | `state_dict` (ms) | `load_pruned` (ms) | `replay` (ms) | "
             "`load_pruned` / `state_dict` | `replay` / `state_dict` | same outputs | goal <= 2x |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, r in lt["models"].items():
        parts.append(f"| {name} | {r['weights_mb']:.1f} | {r['prune_s']:.2f} | {1e3 * r['state_dict_s']:.1f} | "
                     f"{1e3 * r['load_pruned_s']:.1f} | {1e3 * r['replay_s']:.1f} | "
                     f"{r['load_pruned_over_state_dict']:.2f}x | {r['replay_over_state_dict']:.1f}x | "
                     f"{_yes(r['same_outputs'])} | {_mark(r['load_pruned_over_state_dict'] <= 2.0)} |")
    return parts + ["", "What `load_pruned` adds is reading `prunekit.json` and writing into freshly allocated "
                    "tensors (the resized modules' memory is new, the baseline's model already touched its own).", ""]


def _export_latency(el: dict) -> list[str]:
    """Section 10: the exported files' latency beside PyTorch's (bench/export_latency.py)."""
    m = el["machine"]
    parts = ["## 10. Export: PyTorch eager, TorchScript, `torch.export` and ONNX Runtime", "",
             "Each model unpruned and with 50 % of its MACs pruned (`pk.prune(target='macs')`, random weights), "
             "written by `pk.export` in each format (every file checked against PyTorch), then every (model, "
             f"runtime) pair timed on one batch of {el['batch']} in {el['rounds']} interleaved rounds (median), "
             f"{el['threads']} threads everywhere (ONNX Runtime's intra-op threads too); {m['cpu']}, "
             f"{m['cores']} cores.", "", *_command(el), el["table"], "",
             "Speed-up over the unpruned model in eager PyTorch:", "",
             "| model | " + " | ".join(k for k in next(iter(el["models"].values()))["speedup_vs_unpruned_eager"]) +
             " |", "|---|" + "---:|" * len(next(iter(el["models"].values()))["speedup_vs_unpruned_eager"])]
    for name, r in el["models"].items():
        parts.append(f"| {name} | " + " | ".join(f"{v:.2f}x" for v in r["speedup_vs_unpruned_eager"].values()) + " |")
    return parts + [""]


def _geomean(xs: list[float]) -> float:
    import math

    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _yes(b: bool) -> str:
    return "yes" if b else "**no**"
