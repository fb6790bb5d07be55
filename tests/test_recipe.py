"""Recipe validation: every bad key or value fails with its YAML path, the value and what is allowed."""
import re

import pytest
import yaml

from prunekit.recipe.spec import Recipe, ConfigError, apply_overrides, field_docs, load_recipe


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,message", [
    ("trian: {epochs: 3}", "trian: unknown key; did you mean 'train'?"),
    ("train: {lerning_rate: 0.1}", "train.lerning_rate: unknown key"),
    ("train: {lr: fast}", "train.lr: expected a float, got 'fast'"),
    ("train: {epochs: 2.5}", "train.epochs: expected an integer, got 2.5"),
    ("train: {precision: fp16}", "train.precision: expected 'auto' or 'fp32' or 'bf16', got 'fp16'"),
    ("model: {pretrained: yes please}", "model.pretrained: expected a boolean (true/false), got 'yes please'"),
    ("model: [1, 2]", "model: expected a mapping of keys, got [1, 2]"),
    ("strategy: {rho: 1.5}", "strategy.rho: expected a fraction in (0, 1), got 1.5"),
    ("strategy: {rho: 0}", "strategy.rho: expected a fraction in (0, 1), got 0.0"),
    ("train: {epochs: 5, warmup_epochs: 9}", "train.warmup_epochs: expected 0..train.epochs (5), got 9"),
    ("data: {val_fraction: 1}", "data.val_fraction"),
    ("model: {kwargs: 3}", "model.kwargs: expected a mapping, got 3"),
])
def test_bad_values_name_the_path(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize("section,kwargs,message", [
    ("DataSection", {"limit_train": 0}, "data.limit_train: expected an integer >= 1 or null (every training image)"),
    ("DataSection", {"limit_val": -3}, "data.limit_val: expected an integer >= 1 or null"),
    ("DataSection", {"num_workers": -1}, "data.num_workers: expected an integer >= 0, got -1"),
    ("TrainSection", {"max_steps_per_epoch": 0}, "train.max_steps_per_epoch: expected an integer >= 1 or null"),
    ("TrainSection", {"eval_batch_size": 0}, "train.eval_batch_size: expected an integer >= 1 or null"),
    ("TrainSection", {"seed": 2**32}, "train.seed: expected an integer in 0 .. 4294967295"),
    ("TrainSection", {"grad_clip": 0.0}, "train.grad_clip: expected a finite number > 0 or null"),
    ("ModelSection", {"in_chans": 0}, "model.in_chans: expected an integer >= 1, got 0"),
    ("ModelSection", {"pretrain": "pre.yaml"}, "model.pretrain: 'pre.yaml' runs only to write model.checkpoint"),
])
def test_sections_check_their_ranges_from_python_too(section, kwargs, message):
    import prunekit.recipe.spec as recipe_module

    with pytest.raises(ConfigError, match=re.escape(message)):
        getattr(recipe_module, section)(**kwargs)


def test_zero_is_a_value_and_only_null_is_unset(tmp_path):
    r = load_recipe(write(tmp_path, "train: {batch_size: 8, eval_batch_size: null, max_steps_per_epoch: 1}"))
    assert (r.train.eval_batch, r.train.max_steps_per_epoch) == (16, 1)
    assert load_recipe(write(tmp_path, "train: {batch_size: 8, eval_batch_size: 3}")).train.eval_batch == 3


def test_yaml_aliases_within_the_limit_are_fine(tmp_path):
    r = load_recipe(write(tmp_path, "model: {kwargs: {a: &a [1, 2], b: *a}}\ntrain: &t {epochs: 3, warmup_epochs: 1}"))
    assert r.model.kwargs == {"a": [1, 2], "b": [1, 2]} and r.train.epochs == 3


def test_malformed_yaml_gives_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"malformed YAML at line 3, column 2"):
        load_recipe(write(tmp_path, "train:\n  lr: 0.1\n epochs: 3\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_11_exponent_strings_are_floats(tmp_path):
    r = load_recipe(write(tmp_path, "train: {lr: 1e-3, weight_decay: 5e-2}"))
    assert r.train.lr == 1e-3 and r.train.weight_decay == 0.05


def test_overrides_apply_and_are_validated(tmp_path):
    p = write(tmp_path, "name: x\ntrain: {lr: 0.1}\nmethod: {name: adapters, sigma: 32}")
    r = load_recipe(p, ["train.lr=0.01", "method.sigma=8", "data.limit_train=100", "model.kwargs={depth: 2}"])
    assert (r.train.lr, r.method["sigma"], r.data.limit_train, r.model.kwargs) == (0.01, 8, 100, {"depth": 2})
    assert load_recipe(p, ["method=linear"]).method == {"name": "linear"}
    with pytest.raises(ConfigError, match="train.lr: expected a float, got 'fast'"):
        load_recipe(p, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_recipe(p, ["train.lr"])
    with pytest.raises(ConfigError, match="train.lr: is 0.1, not a section"):
        apply_overrides({"train": {"lr": 0.1}}, ["train.lr.x=1"])


def test_name_defaults_to_the_file_name(tmp_path):
    assert load_recipe(write(tmp_path, "{}", "my_run.yaml")).name == "my_run"


def test_every_key_is_documented():
    doc = (__import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    missing = [path for path, *_ in field_docs(Recipe) if f"`{path}`" not in doc]
    assert not missing, f"docs/recipes.md lacks {missing}"
    from prunekit.methods import METHODS

    for name, method in METHODS.items():
        assert f"`{name}`" in doc
        for path, *_ in field_docs(method.config_cls, "method."):
            assert f"`{path}`" in doc, f"docs/recipes.md lacks {path} ({name})"


def test_every_documented_key_exists():
    """The other way round: a key in a table of docs/recipes.md that the schema lost (or never had) is a doc bug."""
    import re
    from pathlib import Path

    from prunekit.methods import METHODS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    keys = doc[doc.index("## Keys"):]
    documented = re.findall(r"^\| `([a-z_][a-z0-9_.]*)` \|", keys, flags=re.MULTILINE)
    assert len(documented) > 60  # the tables were found
    known = {path for path, *_ in field_docs(Recipe)}
    known |= {path for _, m in METHODS.items() for path, *_ in field_docs(m.config_cls, "method.")}
    unknown = sorted(set(documented) - known)
    assert not unknown, f"docs/recipes.md documents keys the recipe schema does not have: {unknown}"
    row = {k: line for line in keys.splitlines() for k in re.findall(r"^\| `([a-z_.]+)` \|", line)}
    for path, _, help_text, _ in field_docs(Recipe):  # the meaning column is the key's help text
        assert help_text in row[path], f"docs/recipes.md: the row of {path} does not say {help_text!r}"


def test_shipped_recipes_parse():
    from pathlib import Path

    from prunekit.ablation.grid import is_ablation_file, load_ablation

    for p in (Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"):
        if is_ablation_file(p):
            assert load_ablation(p).description, f"{p} has no description"
            continue
        r = load_recipe(p)
        assert r.description, f"{p} has no description"
        assert yaml.safe_load(p.read_text())


def test_every_problem_of_a_recipe_is_reported_at_once(tmp_path):
    p = write(tmp_path, "trian: {epochs: 3}\ntrain: {lr: fast, epochs: 0, batch_size: 8}\nstrategy: {rho: 1.5}\n"
                        "data: {limit_val: 0}\nmodel: {in_chans: 0, img_size: 4}")
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert sorted(e.value.problems) == sorted([
        "trian: unknown key; did you mean 'train'? allowed in recipe: name, description, model, method, strategy, "
        "data, train, output, resolved",
        "train.lr: expected a float, got 'fast'",
        "train.epochs: expected an integer >= 1, got 0",
        "strategy.rho: expected a fraction in (0, 1), got 1.5",
        "data.limit_val: expected an integer >= 1 or null (every validation image), got 0",
        "model.in_chans: expected an integer >= 1, got 0",
        "model.img_size: expected at least 8 pixels, got 4"])
    assert str(e.value).startswith("7 problems:\n  ")


def test_a_check_that_would_judge_a_default_is_left_out():
    # epochs did not convert: warmup_epochs is not compared with the default epochs (100) standing in for it
    with pytest.raises(ConfigError) as e:
        parse_section_of({"train": {"epochs": "many", "warmup_epochs": 200}})
    assert e.value.problems == ["train.epochs: expected an integer, got 'many'"]


def parse_section_of(data):
    from prunekit.config import parse_section

    return parse_section(Recipe, data)


def test_names_and_method_keys_are_checked_together(tmp_path):
    from prunekit.run import check_recipe

    r = load_recipe(write(tmp_path, "model: {allow_random_backbone: true}\nmethod: {name: adapters, sigma: 0}\n"
                                    "strategy: {name: tinna}\ndata: {name: digitz}"))
    with pytest.raises(ConfigError) as e:
        check_recipe(r)
    assert [p.split(":")[0] for p in e.value.problems] == ["method.sigma", "strategy.name", "data.name"]
    assert "method.sigma: expected a number > 0, got 0.0" in e.value.problems
    assert "AdapterConfig" not in str(e.value)


def test_a_description_follows_overrides_of_what_it_describes(tmp_path):
    p = write(tmp_path, "description: MNIST to digits\ndata: {name: digits}", "qs.yaml")
    assert load_recipe(p, ["train.seed=3", "output.run_name=x"]).description == "MNIST to digits"
    moved = load_recipe(p, ["data.name=imagefolder", "data.root=pics", "train.seed=3"])
    assert moved.description == "qs.yaml run with --set data.name=imagefolder --set data.root=pics"
    assert load_recipe(p, ["data.root=pics", "description=mine"]).description == "mine"
