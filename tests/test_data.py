import gzip
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data.bundled import FASHION_MNIST_SYSTEM_DIR
from prunekit.data.datasets import load_data, make_loaders
from prunekit.data.folders import UnreadableImagesWarning
from prunekit.recipe.sections import DataSection
from prunekit.registry import PrunekitError


def batch(bundle, n=4):
    train, _ = make_loaders(bundle, n, n, 0, seed=0)
    return next(iter(train))


@pytest.mark.parametrize("name,total", [("mnist5k", 5000), ("digits", 1797)])
def test_bundled_sets_are_real_images_resized_and_normalised(name, total):
    bundle = load_data(DataSection(name=name, val_fraction=0.2), img_size=32)
    assert len(bundle.train) + len(bundle.val) == total and bundle.num_classes == 10
    assert abs(len(bundle.val) - 0.2 * total) <= 1
    x, y = batch(bundle)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    # normalised with ImageNet's statistics; undone, the grey image is the same in all 3 channels, within [0, 1]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    grey = x * std + mean
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    torch.testing.assert_close(grey[:, 0], grey[:, 2])
    assert grey.min() >= -1e-5 and grey.max() <= 1 + 1e-5 and grey.max() > 0.5  # real strokes, black background
    again = load_data(DataSection(name=name, val_fraction=0.2), img_size=32)
    assert torch.equal(bundle.val.tensors[1], again.val.tensors[1])  # the split is seeded


def test_limits_and_training_order_follow_the_seed():
    cfg = DataSection(name="digits", limit_train=50, limit_val=20)
    bundle = load_data(cfg, img_size=16)
    assert (len(bundle.train), len(bundle.val)) == (50, 20)
    a = [y for _, y in make_loaders(bundle, 8, 8, 0, seed=1)[0]]
    b = [y for _, y in make_loaders(bundle, 8, 8, 0, seed=1)[0]]
    c = [y for _, y in make_loaders(bundle, 8, 8, 0, seed=2)[0]]
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not all(torch.equal(u, v) for u, v in zip(a, c))


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (30, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (10, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    bundle = load_data(DataSection(name="fashion_mnist", root=str(tmp_path)), img_size=32)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (30, 10, 10)
    assert batch(bundle)[0].shape == (4, 3, 32, 32)


def test_fashion_mnist_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(PrunekitError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataSection(name="fashion_mnist", root=str(tmp_path)), img_size=32)


@pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    bundle = load_data(DataSection(name="fashion_mnist"), img_size=28)
    assert (len(bundle.train), len(bundle.val)) == (60000, 10000)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "flowers102"])
def test_torchvision_set_absent_offline_is_a_clear_error(name, tmp_path):
    with pytest.raises(PrunekitError, match=rf"data.name={name}: no dataset files under .*set data.download: true"):
        load_data(DataSection(name=name, root=str(tmp_path), download=False), img_size=32)


def make_images(folder, classes, per_class=3, size=12):
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), 40 * i, dtype=np.uint8)).save(folder / c / f"{i}.png")


def test_imagefolder(tmp_path):
    make_images(tmp_path / "train", ["cat", "dog", "eel"])
    make_images(tmp_path / "val", ["cat", "dog", "eel"], per_class=1)
    bundle = load_data(DataSection(name="imagefolder", root=str(tmp_path)), img_size=16)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (9, 3, 3)
    assert batch(bundle, 3)[0].shape == (3, 3, 16, 16)


def test_imagefolder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "cat").mkdir(parents=True)
    with pytest.raises(PrunekitError, match="Couldn't find any|no images|allowed extensions"):
        load_data(DataSection(name="imagefolder", root=str(tmp_path)), img_size=16)
    with pytest.raises(PrunekitError, match="expected train/ and val/"):
        load_data(DataSection(name="imagefolder", root=str(tmp_path / "train")), img_size=16)


def test_domainnet_split_files(tmp_path):
    make_images(tmp_path / "clipart", ["aircraft_carrier", "zebra"], per_class=2)
    (tmp_path / "clipart_train.txt").write_text(
        "clipart/aircraft_carrier/0.png 0\nclipart/aircraft_carrier/1.png 0\nclipart/zebra/0.png 344\n")
    (tmp_path / "clipart_test.txt").write_text("clipart/zebra/1.png 344\n")
    bundle = load_data(DataSection(name="domainnet", root=str(tmp_path), domain="clipart"), img_size=16)
    assert (len(bundle.train), len(bundle.val), bundle.num_classes) == (3, 1, 345)
    x, y = batch(bundle, 3)
    assert x.shape == (3, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 344]  # shuffled
    with pytest.raises(PrunekitError, match="data.domain: expected one of clipart"):
        load_data(DataSection(name="domainnet", root=str(tmp_path), domain="clip"), img_size=16)


def break_images(folder):
    """A truncated JPEG and a PNG of noise among good images: what an interrupted copy leaves."""
    jpeg = folder / "cat" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    (folder / "dog" / "noise.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))


def test_imagefolder_unreadable_files_refuse_to_start_or_are_skipped_with_a_count(tmp_path):
    make_images(tmp_path / "train", ["cat", "dog"])
    make_images(tmp_path / "val", ["cat", "dog"], per_class=1)
    break_images(tmp_path / "train")
    with pytest.raises(PrunekitError, match=r"2 image file\(s\) cannot be read: train/cat/cut.jpg \(OSError: .*"
                                            r"train/dog/noise.png \(UnidentifiedImageError.*data.skip_unreadable: "):
        load_data(DataSection(name="imagefolder", root=str(tmp_path)), img_size=16)
    with pytest.warns(UnreadableImagesWarning, match=r"left out 2 unreadable image file\(s\).*train/cat/cut.jpg"):
        bundle = load_data(DataSection(name="imagefolder", root=str(tmp_path), skip_unreadable=True), img_size=16)
    assert (len(bundle.train), len(bundle.val)) == (6, 2)
    assert all(not p.endswith(("cut.jpg", "noise.png")) for p, _ in bundle.train.samples)
    assert batch(bundle, 6)[0].shape == (6, 3, 16, 16)  # every image left loads


def test_only_the_images_a_run_uses_are_checked(tmp_path):
    make_images(tmp_path / "train", ["cat", "dog"])
    make_images(tmp_path / "val", ["cat", "dog"], per_class=1)
    (tmp_path / "train" / "dog" / "z.png").write_bytes(b"not a png")  # the 7th image in ImageFolder's order
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundle = load_data(DataSection(name="imagefolder", root=str(tmp_path), limit_train=6), img_size=16)
    assert len(bundle.train) == 6
    with pytest.raises(PrunekitError, match=r"1 image file\(s\) cannot be read: train/dog/z.png"):
        load_data(DataSection(name="imagefolder", root=str(tmp_path), limit_train=7), img_size=16)
    with pytest.warns(UnreadableImagesWarning, match=r"left out 1 unreadable image file\(s\).*train/dog/z.png"):
        bundle = load_data(DataSection(name="imagefolder", root=str(tmp_path), limit_train=7, skip_unreadable=True),
                           img_size=16)
    assert len(bundle.train) == 6 and not any(p.endswith("z.png") for p, _ in bundle.train.dataset.samples)


def test_a_good_jpeg_passes_without_decoding_and_a_truncated_one_is_named(tmp_path):
    from prunekit.data.folders import _image_problem

    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good)
    assert _image_problem(good) is None
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:-200])
    assert "truncated" in _image_problem(cut)
    assert _image_problem(tmp_path / "absent.png").startswith("FileNotFoundError")


def test_a_training_set_of_one_class_is_refused(tmp_path):
    make_images(tmp_path / "train", ["cat", "dog"])
    make_images(tmp_path / "val", ["cat", "dog"], per_class=1)
    with pytest.raises(PrunekitError, match=r"the training images hold one class \('cat'\) of 2; data.limit_train=2 "
                                            r"keeps the first 2 images, which all belong to it"):
        load_data(DataSection(name="imagefolder", root=str(tmp_path), limit_train=2), img_size=16)
    with pytest.raises(PrunekitError, match=r"data.name=digits: the training images hold one class \(0\) of 10"):
        load_data(DataSection(name="digits", limit_train=1), img_size=16)


def test_domainnet_listing_errors_name_the_line_and_missing_files(tmp_path):
    make_images(tmp_path / "clipart", ["a", "b"], per_class=1)
    (tmp_path / "clipart_train.txt").write_text("clipart/a/0.png 0\nclipart/b/0.png one\n")
    (tmp_path / "clipart_test.txt").write_text("clipart/b/0.png 1\n")
    with pytest.raises(PrunekitError, match=r"clipart_train.txt: line 2: expected '<image path> <class index>'"):
        load_data(DataSection(name="domainnet", root=str(tmp_path), domain="clipart"), img_size=16)
    (tmp_path / "clipart_train.txt").write_text("clipart/a/0.png 0\nclipart/b/gone.png 1\n")
    with pytest.raises(PrunekitError, match=r"1 image file\(s\) cannot be read: clipart/b/gone.png "
                                            r"\(FileNotFoundError"):
        load_data(DataSection(name="domainnet", root=str(tmp_path), domain="clipart"), img_size=16)
