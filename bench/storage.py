"""Storage per task: bytes of the adapters-and-head file after each TINA cycle vs one full fine-tuned model.

Two sources, labelled in every row. **Trained**: the per-cycle files of a real quickstart run (``prunekit run
quickstart``: the offline ViT, sigma 8 -> 64), as the run wrote them. **Untrained**: Swin-T and ViT-B/16 with 100
classes, sigma 32 adapters pruned by a real TINA schedule (rho 0.5, to sigma 512) with no training in between, on
random ``up`` weights scaled by a random factor per adapter (which adapters survive is arbitrary; the sizes follow the
schedule). Every file is written with safetensors and measured on disk.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import timm
import torch
from torch import nn

from common import device, parser, quickstart_run, run_cycles, strip_adapters, write
from prunekit import Engine, find_adapters, inject_adapters, mark_trainable
from prunekit.io.files import save_safetensors


def trained(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def scenario(name: str, model_name: str, tmp: Path, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    kwargs = {"img_size": 32, "patch_size": 4} if quick else {}
    model = timm.create_model(model_name, num_classes=100, **kwargs)
    full = save_safetensors(tmp / f"{name}_full.safetensors", model.state_dict())
    inject_adapters(model, sigma=32)
    mark_trainable(model)
    for a in find_adapters(model).values():
        nn.init.normal_(a.up.weight, std=0.02)
        with torch.no_grad():
            a.up.weight.mul_(torch.rand(()) * 2)
    rows = []

    def record(label, m):
        size = save_safetensors(tmp / f"{name}_{len(rows)}.safetensors", trained(m))
        rows.append({"model": label, "bytes": size, "full_model_bytes": full, "smaller_by": full / size,
                     "adapters_left": len(find_adapters(m))})
        print(f"{name}: {label:<28} {size / 1024:9.1f} KB  ({full / size:6.0f}x smaller than the full model, "
              f"{full / 2**20:.1f} MB)")

    record("untrained: sigma 32 adapters + head", model)
    x1 = torch.zeros(1, 3, 32 if quick else 224, 32 if quick else 224)
    engine = Engine(model, lambda m, opt, c: {}, example_inputs=x1, strategy="tina", rho=0.5, sigma_target=512)
    engine.add_callback("on_prune", lambda eng, plan: record(f"untrained: TINA cycle {plan.meta['cycle'] + 1} "
                                                             f"(sigma {eng.sigma(eng.widths()):.0f})", eng.model))
    engine.run()
    return rows


def trained_scenario(run_dir: Path, tmp: Path) -> list[dict]:
    """The adapter files of a finished quickstart run, one per cycle, against the run's whole model on disk."""
    from prunekit.run import load_run

    rows = []
    for rec in run_cycles(run_dir):
        _, model, _ = load_run(run_dir, rec["cycle"])
        if not rows:
            full = save_safetensors(tmp / "quickstart_full.safetensors", strip_adapters(model).state_dict())
            _, model, _ = load_run(run_dir, rec["cycle"])
        size = (run_dir / rec["adapter_file"]).stat().st_size
        rows.append({"model": f"trained: quickstart cycle {rec['cycle']} (sigma {rec['sigma']:.0f})", "bytes": size,
                     "full_model_bytes": full, "smaller_by": full / size, "adapters_left": len(find_adapters(model))})
        print(f"quickstart: {rows[-1]['model']:<40} {size / 1024:9.1f} KB ({full / size:6.0f}x smaller)")
    return rows


def main():
    args = parser(__doc__.splitlines()[0]).parse_args()
    dev = device("cpu")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {"offline_default_trained": trained_scenario(quickstart_run(args.quick, tmp), tmp)}
        if args.quick:
            results["vit_tiny"] = scenario("vit_tiny", "vit_tiny_patch16_224", tmp, True)
        else:
            results["swin_t"] = scenario("swin_t", "swin_tiny_patch4_window7_224", tmp, False)
            results["vit_b16"] = scenario("vit_b16", "vit_base_patch16_224", tmp, False)
    write("storage", {"scenarios": results}, args.out, dev)


if __name__ == "__main__":
    main()
