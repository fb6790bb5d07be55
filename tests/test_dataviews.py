"""Derived tasks (data.classes, data.shift, data.train_size / val_size, data.split_seed) and the pretraining set."""
from collections import Counter

import numpy as np
import pytest
import torch

from prunekit.data.datasets import load_data, task_classes
from prunekit.data.views import SHIFT_OPS, labels_of, stratified_subset
from prunekit.errors import ConfigError
from prunekit.recipe.spec import load_recipe
from prunekit.recipe.sections import SHIFTS, DataSection
from prunekit.run.task import task_size
from prunekit.run.task import load_bundle

from test_data import write_idx


def test_every_shift_the_recipe_allows_is_implemented():
    assert set(SHIFTS.__args__) == set(SHIFT_OPS)


def test_shifts_turn_and_invert_the_stored_images():
    plain = load_data(DataSection(name="mnist5k", split_seed=0), img_size=28)
    shifted = load_data(DataSection(name="mnist5k", split_seed=0, shift=["rot90", "invert"]), img_size=28)
    x, y = plain.train.tensors
    xs, ys = shifted.train.tensors
    assert torch.equal(ys, y) and xs.dtype == torch.uint8
    assert torch.equal(xs[0], 255 - torch.rot90(x[0], 1, (0, 1)))  # counter-clockwise, then inverted
    assert xs[0, 0, -1] == 255 - x[0, 0, 0]  # the top-left pixel went to the bottom-left
    assert torch.equal(shifted.val.tensors[0], 255 - torch.rot90(plain.val.tensors[0], 1, (1, 2)))


def test_classes_keep_and_relabel_in_the_order_given():
    full = load_data(DataSection(name="digits", split_seed=0), img_size=8)
    part = load_data(DataSection(name="digits", split_seed=0, classes=[7, 2, 9]), img_size=8)
    assert part.num_classes == 3
    for whole, kept in ((full.train, part.train), (full.val, part.val)):
        y = whole.tensors[1]
        keep = (y == 7) | (y == 2) | (y == 9)
        assert torch.equal(kept.tensors[0], whole.tensors[0][keep])
        assert kept.tensors[1].tolist() == [{7: 0, 2: 1, 9: 2}[int(v)] for v in y[keep]]
    assert task_classes(DataSection(name="digits", classes=[7, 2, 9])) == 3
    assert task_classes(DataSection(name="digits")) == 10


def test_train_size_is_a_stratified_subset_fixed_by_the_split_seed():
    cfg = DataSection(name="mnist5k", split_seed=4, train_size=300, val_size=100)
    a, b = load_data(cfg, img_size=28, seed=4), load_data(cfg, img_size=28, seed=4)
    assert (len(a.train), len(a.val)) == (300, 100)
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    counts = Counter(labels_of(a.train))
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 10  # every class, in proportion
    other = load_data(cfg, img_size=28, seed=5)
    assert other.train.indices != a.train.indices
    # the first N of mnist5k's class-ordered split would be one class only: limit_train refuses, train_size does not
    with pytest.raises(Exception, match="hold one class"):
        load_data(DataSection(name="mnist5k", split_seed=4, limit_train=300), img_size=28, seed=4)


def test_stratified_subset_counts_add_up_and_follow_the_shares():
    ds = torch.utils.data.TensorDataset(torch.zeros(100, 2), torch.tensor([0] * 70 + [1] * 20 + [2] * 10))
    sub = stratified_subset(ds, 11, seed=0, stream=1, key="data.train_size", source="x")
    assert len(sub) == 11 and Counter(labels_of(sub)) == {0: 8, 1: 2, 2: 1}  # 7.7 / 2.2 / 1.1, largest remainders
    with pytest.raises(ConfigError, match=r"data.train_size: 101 is more than the 100 images of x"):
        stratified_subset(ds, 101, seed=0, stream=1, key="data.train_size", source="x")


def test_the_split_seed_keeps_one_split_for_every_train_seed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {img_size: 16}\ndata: {name: digits, train_size: 200}\n")
    fixed = [load_bundle(load_recipe(recipe, [f"train.seed={s}", "data.split_seed=0"])) for s in (1, 2)]
    assert torch.equal(fixed[0].val.tensors[1], fixed[1].val.tensors[1])
    assert fixed[0].train.indices == fixed[1].train.indices
    anew = [load_bundle(load_recipe(recipe, [f"train.seed={s}"])) for s in (1, 2)]
    assert not torch.equal(anew[0].val.tensors[1], anew[1].val.tensors[1])  # null: the train seed splits
    assert task_size(load_recipe(recipe, ["data.classes=[1, 3]"])).num_classes == 2


@pytest.mark.parametrize("section,message", [
    ({"classes": [1]}, "data.classes: expected a list of at least 2 distinct class indices"),
    ({"classes": [1, 2, 1]}, r"data.classes: .* repeats \[1\]"),
    ({"classes": [-1, 2]}, "data.classes: expected a list of at least 2"),
    ({"shift": ["rotate"]}, "data.shift\\[0\\]: expected 'invert' or .*did you mean 'rot90'"),
    ({"train_size": 0}, "data.train_size: expected an integer >= 1 or null"),
    ({"split_seed": -1}, "data.split_seed: expected an integer in 0 .."),
])
def test_bad_derived_task_keys_name_the_key(tmp_path, section, message):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"data": {"name": "digits", **section}}))
    with pytest.raises(ConfigError, match=message):
        load_recipe(p)


def test_derived_tasks_the_data_cannot_give_are_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"data.classes: \[10\] not among the 10 classes of data.name=digits"):
        load_data(DataSection(name="digits", classes=[1, 10]), img_size=8)
    with pytest.raises(ConfigError, match="data.train_size: 5000 is more than the 1438 images"):
        load_data(DataSection(name="digits", train_size=5000), img_size=8)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / c / "x.png")
    with pytest.raises(ConfigError, match="data.shift: \\['invert'\\] needs a grey-scale set"):
        load_data(DataSection(name="imagefolder", root=str(tmp_path), shift=["invert"]), img_size=8)
    folder = load_data(DataSection(name="imagefolder", root=str(tmp_path), classes=[1, 0]), img_size=8)
    assert folder.num_classes == 2 and [y for _, y in folder.train] == [1, 0]  # 'a' is class 0, now label 1


def test_fashion_mnist_and_mnist5k_as_one_set(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (30, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    both = load_data(DataSection(name="fashion_mnist_mnist5k", root=str(tmp_path), val_fraction=0.2), img_size=28)
    digits = load_data(DataSection(name="mnist5k", val_fraction=0.2), img_size=28)
    assert both.num_classes == 20 and (len(both.train), len(both.val)) == (30 + 4000, 10 + 1000)
    assert torch.equal(both.val.tensors[0][10:], digits.val.tensors[0])  # mnist5k's own validation split
    assert torch.equal(both.val.tensors[1][10:], digits.val.tensors[1] + 10)
    part = load_data(DataSection(name="fashion_mnist_mnist5k", root=str(tmp_path), classes=[0, 1, 10, 11]),
                     img_size=28)
    assert part.num_classes == 4 and sorted(Counter(labels_of(part.train))) == [0, 1, 2, 3]
