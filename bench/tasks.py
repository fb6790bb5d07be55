"""Many tasks, one backbone: memory, mixed-batch throughput and serving, for 1, 4, 16 and 64 tasks.

    python bench/tasks.py            # about 10 minutes on 2 cores
    python bench/tasks.py --quick    # checks the script runs (tests); figures meaningless

Tasks are random adapters at the quickstart's widths on the quickstart's ViT (32 px, patch 4, dim 96, depth 6; random
backbone weights: speed and memory do not depend on them): 12 positions (every attention and MLP sub-layer), task t
at TINA cycle t mod 4 (sigma 8, 16, 32, 64: 144, 72, 36, 18 neurons in all, spread at random over the positions, some
emptied), a 10-class head each.

1. *Memory*: one backbone + N tasks (``MultiTaskModel``) against N separate single-task models (the backbone with the
   task's adapters injected, what ``prunekit.load`` gives per run): the tensors' bytes, and the growth of the resident
   set of a fresh process that builds them (each configuration in its own process).
2. *Mixed-batch throughput*: batches of 16 and of 64 images, each image of a task drawn at random among N; the shared
   model runs each batch in one backbone pass; the separate models run each task's images through that task's model
   (the best N models can do). Interleaved rounds, the median; and the shared model's cost against one task's batch,
   which is how the cost grows with the tasks in a batch. The two sides' outputs are compared (max |difference|).
3. *Serving*: ``create_app`` on uvicorn in its own process (the routes and batcher of ``prunekit serve``), N tasks,
   a bounded local load (``--clients`` concurrent clients, ``--requests`` PNG uploads of random tasks); batching on
   (max batch 32, 5 ms wait) against off (max batch 1): requests/s, p50 / p99 latency.
"""
from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import common

POSITIONS = [f"blocks.{i}.{s}" for i in range(6) for s in ("attn", "mlp")]
DIM, WIDTH, CLASSES = 96, 12, 10


def backbone() -> nn.Module:
    return common.small_vit(dim=DIM, depth=6, classes=CLASSES, img=32).eval()


def recipe():
    from prunekit.recipe.builtin import find_recipe
    from prunekit.recipe.spec import load_recipe

    return load_recipe(find_recipe("quickstart"))


def make_task(t: int, rec=None):
    """Task t: TINA cycle t mod 4's total width spread at random over the positions (module docstring)."""
    from prunekit.tasks.source import BackboneId, TaskAdapter, TaskRun

    g = torch.Generator().manual_seed(t)
    total = WIDTH * len(POSITIONS) // 2 ** (t % 4)
    share = torch.rand(len(POSITIONS), generator=g)
    widths = (share / share.sum() * total).round().clamp(max=WIDTH).int().tolist()
    adapters = {p: TaskAdapter("series", "gelu", 1.0, "channels_last", torch.randn(n, DIM, generator=g) * 0.05,
                               torch.zeros(n), torch.randn(DIM, n, generator=g) * 0.05, torch.zeros(DIM))
                for p, n in zip(POSITIONS, widths) if n}
    head = {"weight": torch.randn(CLASSES, DIM, generator=g) * 0.1, "bias": torch.zeros(CLASSES)}
    same = BackboneId("vit_tiny_patch16_224", "{}", 32, 3, (0.5,), (0.5,), "random:bench")
    return TaskRun(Path(f"task{t}"), rec, 0, [str(k) for k in range(CLASSES)], adapters, "head", head, same)


def shared_model(n: int, net: nn.Module | None = None, rec=None):
    from prunekit.tasks.model import MultiTaskModel

    model = MultiTaskModel(net if net is not None else backbone(), make_task(0, rec), "task0")
    for t in range(1, n):
        model.add_task(make_task(t, rec), name=f"task{t}")
    return model.eval()


def single_model(net: nn.Module, run, own: bool = False) -> nn.Module:
    """The backbone (a copy, or ``net`` itself when ``own``) with one task's adapters injected as prunekit injects
    them, and its head."""
    from prunekit.adapters.layers import Adapter, SeriesAdapterLayer
    from prunekit.core.wrapper import set_submodule

    model = net if own else copy.deepcopy(net)
    for p, a in run.adapters.items():
        adapter = Adapter(a.dim, a.width, act_layer=a.act, residual=True, scale=a.scale)
        with torch.no_grad():
            for part, w, b in ((adapter.down, a.down_weight, a.down_bias), (adapter.up, a.up_weight, a.up_bias)):
                part.weight.copy_(w)
                part.bias.copy_(b)
        set_submodule(model, p, SeriesAdapterLayer(model.get_submodule(p), adapter))
    with torch.no_grad():
        model.head.weight.copy_(run.head["weight"])
        model.head.bias.copy_(run.head["bias"])
    return model.eval().requires_grad_(False)


def tensor_bytes(modules) -> int:
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child_memory(n: int, mode: str) -> dict:
    """In a fresh process: build N tasks one way, the tensors' bytes and the resident set's growth."""
    import gc

    import prunekit.tasks.model  # noqa: F401 - imports before the first reading

    torch.set_num_threads(1)
    backbone()  # the first build pays for timm's lazy imports; not the models' memory
    gc.collect()
    before = rss()
    if mode == "shared":
        model = shared_model(n)
        size = tensor_bytes([model])
    else:
        models = [single_model(backbone(), make_task(t), own=True) for t in range(n)]
        size = tensor_bytes(models)
    gc.collect()
    return {"tensor_bytes": size, "rss_growth_bytes": rss() - before}


def memory(ns: list[int]) -> list[dict]:
    rows = []
    for n in ns:
        row = {"tasks": n}
        for mode in ("shared", "separate"):
            out = subprocess.run([sys.executable, __file__, "--child-memory", str(n), mode], capture_output=True,
                                 text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            row[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        row["tensor_ratio"] = row["separate"]["tensor_bytes"] / row["shared"]["tensor_bytes"]
        row["rss_ratio"] = row["separate"]["rss_growth_bytes"] / max(1, row["shared"]["rss_growth_bytes"])
        print(f"memory, {n} tasks: {row}", flush=True)
        rows.append(row)
    return rows


def throughput(ns: list[int], sizes: list[int], rounds: int, batches: int) -> list[dict]:
    net, rows = backbone(), []
    for n in ns:
        shared = shared_model(n, copy.deepcopy(net))
        singles = [single_model(net, make_task(t)) for t in range(n)]
        for size in sizes:
            rows.append(_throughput(shared, singles, size, rounds, batches))
            print(f"throughput, {n} tasks, batch {size}: {rows[-1]}", flush=True)
    return rows


@torch.no_grad()
def _throughput(shared, singles: list[nn.Module], size: int, rounds: int, batches: int) -> dict:
    n = len(singles)
    g = torch.Generator().manual_seed(n * 1000 + size)
    work = []
    for _ in range(batches):
        x = torch.randn(size, 3, 32, 32, generator=g)
        tasks = torch.randint(n, (size,), generator=g).tolist()
        work.append((x, tasks, [f"task{t}" for t in tasks]))

    def run_shared():
        return [shared(x, tasks=names) for x, _, names in work]

    def run_separate():
        out = []
        for x, tasks, _ in work:
            logits = torch.empty(size, CLASSES)
            for t in sorted(set(tasks)):
                idx = torch.tensor([b for b, u in enumerate(tasks) if u == t])
                logits[idx] = singles[t](x[idx])
            out.append(logits)
        return out

    def run_one_task():
        return [shared(x, tasks="task0") for x, _, _ in work]

    diff = max((a.padded - b).abs().max().item() for a, b in zip(run_shared(), run_separate()))
    t = common.interleaved({"shared": run_shared, "separate": run_separate, "one_task": run_one_task}, rounds)
    images = size * batches
    return {"tasks": n, "batch": size, "tasks_per_batch": statistics.mean(len(set(ts)) for _, ts, _ in work),
            "images_per_s": {k: images / v for k, v in t.items()}, "shared_over_separate": t["separate"] / t["shared"],
            "mixed_cost_over_one_task": t["shared"] / t["one_task"], "max_abs_diff": diff}


def child_serve(n: int, max_batch: int) -> None:
    """In a fresh process: N tasks behind the server's routes on a free loopback port (printed), until killed."""
    from prunekit.serve.app import create_app
    from prunekit.serve.server import bind, run_server

    app = create_app(shared_model(n, rec=recipe()), max_batch=max_batch, max_wait_ms=5.0, queue_size=4096)
    sock = bind("127.0.0.1", 0)
    print(f"port {sock.getsockname()[1]}", flush=True)
    run_server(app, sock, log_level="warning")


def pngs(count: int) -> list[bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images[:count]
    out = []
    for d in digits:
        buf = io.BytesIO()
        Image.fromarray((d * 255 / 16).astype("uint8")).resize((32, 32)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def load(url: str, n: int, images: list[bytes], requests: int, clients: int) -> dict:
    import httpx

    g = torch.Generator().manual_seed(0)
    plan = [(int(torch.randint(n, (1,), generator=g)), images[i % len(images)]) for i in range(requests)]
    latencies, batches = [], []
    queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            while not queue.empty():
                t, body = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/tasks/task{t}/predict", content=body,
                                      headers={"Content-Type": "image/png"})
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                batches.append(r.json()["batch"])

        await asyncio.gather(*[worker() for _ in range(min(clients, 8))])  # warm-up
        latencies.clear(), batches.clear()
        for item in plan:
            queue.put_nowait(item)
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        wall = time.perf_counter() - t0
    ms = sorted(1e3 * x for x in latencies)
    return {"requests_per_s": requests / wall, "p50_ms": ms[len(ms) // 2], "p99_ms": ms[int(0.99 * (len(ms) - 1))],
            "mean_batch": statistics.mean(batches)}


def serving(ns: list[int], requests: int, clients: int) -> list[dict]:
    import httpx

    images = pngs(64)
    rows = []
    for n in ns:
        row = {"tasks": n, "clients": clients, "requests": requests}
        for label, max_batch in (("batching", 32), ("no_batching", 1)):
            proc = subprocess.Popen([sys.executable, __file__, "--child-serve", str(n), str(max_batch)],
                                    stdout=subprocess.PIPE, text=True)
            try:
                port = int(re.match(r"port (\d+)", proc.stdout.readline()).group(1))
                url = f"http://127.0.0.1:{port}"
                for _ in range(200):
                    try:
                        httpx.get(f"{url}/health", timeout=5)
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
                row[label] = asyncio.run(load(url, n, images, requests, clients))
            finally:
                proc.terminate()
                proc.wait(30)
        row["throughput_ratio"] = row["batching"]["requests_per_s"] / row["no_batching"]["requests_per_s"]
        print(f"serving, {n} tasks: {row}", flush=True)
        rows.append(row)
    return rows


def table(mem: list[dict], tp: list[dict], sv: list[dict]) -> str:
    mb = 2 ** 20
    out = ["| tasks | tensors: one backbone + N (MB) | tensors: N models (MB) | N models / shared | RSS growth: shared "
           "(MB) | RSS growth: N models (MB) | N models / shared |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for m in mem:
        out.append(f"| {m['tasks']} | {m['shared']['tensor_bytes'] / mb:.1f} | {m['separate']['tensor_bytes'] / mb:.1f}"
                   f" | {m['tensor_ratio']:.1f}x | {m['shared']['rss_growth_bytes'] / mb:.1f} | "
                   f"{m['separate']['rss_growth_bytes'] / mb:.1f} | {m['rss_ratio']:.1f}x |")
    out += ["", "| tasks | batch | tasks per batch | images/s: mixed batches | images/s: one model per task | mixed / "
            "per task | time: mixed / one task | max abs diff |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in tp:
        out.append(f"| {t['tasks']} | {t['batch']} | {t['tasks_per_batch']:.1f} | {t['images_per_s']['shared']:.0f} | "
                   f"{t['images_per_s']['separate']:.0f} | {t['shared_over_separate']:.2f}x | "
                   f"{t['mixed_cost_over_one_task']:.2f} | {t['max_abs_diff']:.1e} |")
    out += ["", "| tasks | batching: requests/s | p50 ms | p99 ms | mean batch | no batching: requests/s | p50 ms | "
            "p99 ms | batching / none |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sv:
        b, o = s["batching"], s["no_batching"]
        out.append(f"| {s['tasks']} | {b['requests_per_s']:.0f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | "
                   f"{b['mean_batch']:.1f} | {o['requests_per_s']:.0f} | {o['p50_ms']:.1f} | {o['p99_ms']:.1f} | "
                   f"{s['throughput_ratio']:.2f}x |")
    return "\n".join(out)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child-memory":
        print(json.dumps(child_memory(int(sys.argv[2]), sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child-serve":
        torch.set_num_threads(1)
        child_serve(int(sys.argv[2]), int(sys.argv[3]))
        return
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the throughput comparison")
    p.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="images per mixed batch")
    p.add_argument("--batches", type=int, default=4, help="batches per round")
    p.add_argument("--requests", type=int, default=600, help="uploads per server configuration")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.batch, args.rounds, args.batches, args.requests, args.clients = [1, 4], [8], 1, 1, 16, 4
    dev = common.device("cpu" if args.device == "auto" else args.device)
    t0 = time.perf_counter()
    torch.set_num_threads(1)  # one thread for every side: the server's model runs on one, the clients on the other
    mem = memory(args.tasks)
    tp = throughput(args.tasks, args.batch, args.rounds, args.batches)
    sv = serving(args.tasks, args.requests, args.clients)
    common.write("tasks", {"positions": len(POSITIONS), "dim": DIM, "rounds": args.rounds, "clients": args.clients,
                           "batches": args.batches, "memory": mem, "throughput": tp, "serving": sv,
                           "table": table(mem, tp, sv), "seconds": time.perf_counter() - t0}, args.out, dev)


if __name__ == "__main__":
    main()
