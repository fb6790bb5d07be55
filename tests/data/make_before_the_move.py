"""Write the files of tests/data/before_the_move/ with the prunekit of a commit from before the house's move.

    git worktree add /tmp/old aaccba0
    PYTHONPATH=/tmp/old python tests/data/make_before_the_move.py tests/data/before_the_move

aaccba0 is the last commit with the flat layout and no module versions in its files: what a user saved then must
still load (tests/test_before_the_move.py).
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import timm
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

import prunekit as pk
from prunekit.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import small_cnn, tiny_vit  # noqa: E402

MODELS = {  # name -> (builder, input shape, prune() arguments)
    "vit": (tiny_vit, (2, 3, 16, 16), dict(ratio=0.5, target="params")),
    "cnn": (small_cnn, (2, 3, 4, 4), dict(ratio=0.5, target="params")),
    "mobilenetv3": (lambda: timm.create_model("mobilenetv3_small_050", num_classes=10), (2, 3, 32, 32),
                    dict(ratio=0.5, target="macs", scorer="l1_mean")),
}


def main_(out: Path) -> None:
    assert "/old" in pk.__file__ or "old" in Path(pk.__file__).parts[-3], f"not the old prunekit: {pk.__file__}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    refs = {}
    for name, (build, shape, kw) in MODELS.items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        pk.prune(model, x[:1], **kw)
        pk.save_pruned(model, out / name)
        with torch.no_grad():
            refs[f"{name}.input"], refs[f"{name}.output"] = x, model(x)
    save_file({k: v.contiguous() for k, v in refs.items()}, str(out / "outputs.safetensors"))

    recipe = {"name": "tiny", "method": {"name": "adapters", "sigma": 4},
              "model": {"name": "vit_tiny_patch16_224", "img_size": 16, "allow_random_backbone": True,
                        "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "avg"}},
              "strategy": {"name": "tina", "rho": 0.5, "sigma_target": 16},
              "data": {"name": "digits", "limit_train": 256, "limit_val": 128},
              "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 32, "lr": 1e-2, "seed": 3},
              "output": {"dir": str(out)}}
    (out / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(main, ["run", str(out / "tiny.yaml"), "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (out / "tiny.yaml").unlink()
    print(json.dumps({p.name: p.stat().st_size for p in sorted((out / "tiny").rglob("*")) if p.is_file()}, indent=1))


if __name__ == "__main__":
    main_(Path(sys.argv[1]))
