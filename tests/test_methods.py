"""One matrix for every method: tiny ViT and tiny Swin x method (PEFT's shared-tester pattern)."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load, save
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn

from prunekit.methods import METHODS, build_method
from prunekit.methods.phm import phm_width
from prunekit.models.params import count_parameters, head_param_count

CLASSES = 5


def tiny(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "vit":  # dims divisible by 12 so that PHM layers with n = 12 tile them
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=48,
                                 depth=2, num_heads=2, num_classes=CLASSES)
    return SwinTransformer(img_size=16, patch_size=2, window_size=2, embed_dim=24, depths=(1, 1), num_heads=(1, 2),
                           num_classes=CLASSES)


def blocks(model: nn.Module) -> list[tuple[nn.Module, int]]:
    """(block, width) of every transformer block."""
    if isinstance(model, SwinTransformer):
        return [(m, m.norm1.normalized_shape[0]) for m in model.modules() if isinstance(m, SwinTransformerBlock)]
    return [(b, b.norm1.normalized_shape[0]) for b in model.blocks]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def adapter_cost(d: int, n: int) -> int:
    return 2 * n * d + n + d


# name -> (method section, expected trainable-name predicate, closed form(backbone) -> trainable count, additive)
def head(model):
    return head_param_count(model.num_features, CLASSES)


MATRIX = {
    "full": ({}, lambda n: True, lambda m: count_parameters(m), True),
    "linear": ({}, lambda n: n.startswith("head"), head, True),
    "attn_blocks": ({}, lambda n: ".attn." in n or n.startswith("head"),
                    lambda m: sum(n_params(b.attn) for b, _ in blocks(m)) + head(m), True),
    "mlp_blocks": ({}, lambda n: ".mlp." in n or n.startswith("head"),
                   lambda m: sum(n_params(b.mlp) for b, _ in blocks(m)) + head(m), True),
    "bitfit": ({}, lambda n: n.endswith("bias") or n.startswith("head"),
               lambda m: sum(p.numel() for k, p in m.named_parameters() if k.endswith("bias")) + m.get_classifier()
               .weight.numel(), True),
    "lora": ({"rank": 2}, lambda n: "lora_" in n or n.startswith("head"),
             lambda m: sum(2 * 2 * 2 * d for _, d in blocks(m)) + head(m), True),
    "vpt": ({"tokens": 3}, lambda n: "prompt" in n or n.startswith("head"),
            lambda m: 3 * blocks(m)[0][1] + head(m), False),
    "vpt_deep": ({"tokens": 3, "deep": True}, lambda n: "prompt" in n or n.startswith("head"),
                 lambda m: sum(3 * d for _, d in blocks(m)) + head(m), False),
    "adaptformer": ({"hidden": 4}, lambda n: ".adapter." in n or n.startswith("head"),
                    lambda m: sum(adapter_cost(d, 4) for _, d in blocks(m)) + head(m), True),
    "adapters": ({"sigma": 8}, lambda n: ".adapter." in n or n.startswith("head"),
                 lambda m: sum(2 * adapter_cost(d, d // 8) for _, d in blocks(m)) + head(m), True),
    "adapters_fixed_n": ({"hidden": 3}, lambda n: ".adapter." in n or n.startswith("head"),
                         lambda m: sum(2 * adapter_cost(d, 3) for _, d in blocks(m)) + head(m), True),
    "parallel_adapters": ({"sigma": 8}, lambda n: ".adapter." in n or n.startswith("head"),
                          lambda m: sum(2 * adapter_cost(d, d // 8) for _, d in blocks(m)) + head(m), True),
    "phm_adapter": ({"n": 12}, lambda n: ".adapter." in n or n.startswith("head"),
                    lambda m: sum(2 * (2 * 12 ** 3 + 2 * d * phm_width(d, 12, 32, None) // 12
                                       + phm_width(d, 12, 32, None) + d) for _, d in blocks(m)) + head(m), True),
    "compacter": ({"n": 12}, lambda n: ".adapter." in n or n.startswith("head"),
                  lambda m: 12 ** 3 + sum(2 * (3 * (phm_width(d, 12, 32, None) + d)) for _, d in blocks(m))
                  + head(m), True),
}
METHOD_OF = {"vpt_deep": "vpt", "adapters_fixed_n": "adapters"}


def prepare(arch: str, row: str):
    section, *_ = MATRIX[row]
    backbone = tiny(arch).eval()
    model = tiny(arch).eval()
    method, cfg = build_method({"name": METHOD_OF.get(row, row), **section})
    expected = MATRIX[row][2](backbone)
    torch.manual_seed(1)
    method.apply(model, cfg)
    return backbone, model, expected


def test_matrix_covers_every_registered_method():
    assert set(METHODS.names()) == {METHOD_OF.get(r, r) for r in MATRIX}


X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize("arch", ["vit", "swin"])
@pytest.mark.parametrize("row", list(MATRIX))
def test_method(arch, row):
    _, predicate, _, additive = MATRIX[row]
    backbone, model, expected = prepare(arch, row)

    # only the intended parameters are trainable, and the count is the closed form
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and names == {n for n, _ in model.named_parameters() if predicate(n)}
    assert count_parameters(model, trainable_only=True) == expected

    # additive methods start exactly at the backbone's output
    with torch.no_grad():
        start, reference = model(X), backbone(X)
    if additive:
        torch.testing.assert_close(start, reference, rtol=0, atol=1e-6)
    else:
        assert not torch.allclose(start, reference)

    # every trainable parameter receives a gradient (zero-initialised ups get theirs from the second step on)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        silent = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        opt.step()
    assert not silent, f"no gradient for {silent[:5]}"
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    # a save / load round trip of the method's parameters reproduces the outputs
    model.eval()
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    blob = save(trained)
    _, fresh, _ = prepare(arch, row)
    missing, unexpected = fresh.load_state_dict(load(blob), strict=False)
    assert not unexpected and not (set(trained) & set(missing))
    with torch.no_grad():
        torch.testing.assert_close(fresh(X), model(X))


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_method_runs_from_a_recipe(method, tmp_path):
    from test_cli import invoke, tiny_recipe

    recipe = tiny_recipe(tmp_path, model={"kwargs": {"patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 2,
                                                     "global_pool": "avg"}},
                         strategy={"name": "none", "cycles": 1}, train={"epochs": 1, "warmup_epochs": 0},
                         data={"limit_train": 64, "limit_val": 32})
    res = invoke("run", recipe, "--set", f"method={method}", "--quiet")
    assert res.exit_code == 0, res.output
    report = (tmp_path / "runs" / "tiny" / "report.md").read_text()
    assert f"'name': '{method}'" in report and "| 0 |" in report


@pytest.mark.parametrize("method", ["parallel_adapters", "adaptformer"])
def test_tina_prunes_other_prunable_methods(method, tmp_path):
    from test_cli import invoke, tiny_recipe

    section = {"name": method, "hidden": 8} if method == "adaptformer" else {"name": method, "sigma": 4}
    recipe = tiny_recipe(tmp_path, method=section, strategy={"sigma_target": 16},
                         train={"epochs": 1, "warmup_epochs": 0}, data={"limit_train": 64, "limit_val": 32})
    res = invoke("run", recipe, "--quiet")
    assert res.exit_code == 0, res.output
    assert "| 2 | " in res.output  # three cycles: two prunes


def test_every_method_but_full_fine_tuning_freezes_the_backbone():
    assert [name for name, m in METHODS.items() if not m.freezes_backbone] == ["full"]


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_frozen_backbone_methods_refuse_random_weights_unless_allowed(method, tmp_path):
    from prunekit.recipe.spec import ConfigError, load_recipe
    from prunekit.run import check_recipe
    from test_cli import tiny_recipe

    path = tiny_recipe(tmp_path, strategy={"name": "none"}, model={"allow_random_backbone": False})
    recipe = load_recipe(path, [f"method={method}"])
    if METHODS.get(method).freezes_backbone:
        with pytest.raises(ConfigError, match=rf"model: method '{method}' freezes the backbone, but .* random"):
            check_recipe(recipe)
    else:
        check_recipe(recipe)  # full fine-tuning of random weights: how a backbone is pretrained
    for opt_in in ("model.allow_random_backbone=true", "model.pretrained=true", "model.checkpoint=backbone.pth"):
        check_recipe(load_recipe(path, [f"method={method}", opt_in]))


def test_pruning_a_method_without_groups_is_refused(tmp_path):
    from click.testing import CliRunner

    from prunekit.cli import main
    from test_cli import tiny_recipe

    res = CliRunner().invoke(main, ["run", str(tiny_recipe(tmp_path, method={"name": "lora"}))])
    assert res.exit_code == 2
    assert "method 'lora' has no prunable groups" in res.output


def test_params_table_reproduces_the_papers_exact_rows():
    from prunekit.methods.table import param_table

    rows = {r.label: r for r in param_table("swin_tiny_patch4_window7_224", 345,
                                            ["attn_blocks", "mlp_blocks", "adaptformer", "linear"], paper_table=1)}
    for label in ("Att-blocks", "MLP-blocks", "AdaptFormer-64", "Linear probe"):
        assert round(rows[label].trainable / 1e6, 2) == rows[label].paper_m, label
    assert rows["Linear probe"].trainable == 265_305
