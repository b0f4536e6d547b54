import gzip
import pickle
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import DatasetInfo, build_dataset, list_datasets, read_idx

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


# --- helpers ---


def write_idx(path: Path, array: np.ndarray, *, header_dims=None) -> Path:
    dims = array.shape if header_dims is None else header_dims
    header = bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist_like(root: Path, *, num_train=6, num_test=4, gz=True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num_train + num_test, 5, 5), dtype=np.uint8)
    labels = np.arange(num_train + num_test) % 10
    suffix = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{suffix}", images[:num_train])
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", labels[:num_train])
    write_idx(root / f"t10k-images-idx3-ubyte{suffix}", images[num_train:])
    write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", labels[num_train:])
    return images, labels


def save_image(path: Path, color, *, size=(12, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"<html>not an image</html>")
    return path


def make_class_folders(root: Path, colors: dict[str, tuple], per_class: int, *, mode="RGB") -> None:
    for name, color in colors.items():
        for i in range(per_class):
            save_image(root / name / f"{i:03d}.png", color, mode=mode)


RGB_COLORS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str, protocol: int) -> None:
    with path.open("wb") as f:
        pickle.dump({"data": data, label_key: labels, "batch_label": "fake"}, f, protocol=protocol)


def cifar_images(num: int, first_value: int) -> np.ndarray:
    """Rows in CIFAR layout whose red, green and blue planes are constant and distinct per image."""
    planes = np.arange(first_value, first_value + 3 * num, dtype=np.uint8).reshape(num, 3, 1)
    return np.repeat(planes, 1024, axis=2).reshape(num, 3072)


# --- digits ---


def test_digits_shapes_split_sizes_and_stratification():
    train, test = build_dataset("digits", "train", val_split=0), build_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.2 * 1797, abs=10)
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.targets.dtype == torch.int64 and len(ds.targets) == len(ds.images)
    assert train.images.max() == 255 and train.images.min() == 0
    train_counts, test_counts = torch.bincount(train.targets), torch.bincount(test.targets)
    fractions = test_counts / (train_counts + test_counts)
    assert torch.all((fractions - 0.2).abs() < 0.01), fractions
    image, label = train[3]
    assert image.shape == (1, 8, 8) and isinstance(label, int) and label == int(train.targets[3])

    info = train.info
    assert info == test.info
    assert (info.name, info.num_classes, info.in_chans, info.img_size) == ("digits", 10, 1, 8)
    pixels = train.images.double() / 255
    assert info.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-4)
    assert info.std[0] == pytest.approx(pixels.std().item(), abs=1e-3)


def test_digits_split_is_fixed_whatever_the_seed():
    for split in ("test", "val"):
        a = build_dataset("digits", split)
        b = build_dataset("digits", split, seed=123)
        assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)


# --- validation splits ---


def test_val_is_carved_from_train_stratified_and_disjoint_from_both():
    full = build_dataset("digits", "train", val_split=0)
    train, val, test = (build_dataset("digits", split) for split in ("train", "val", "test"))
    assert len(val) == round(0.1 * len(full)) and len(train) + len(val) == len(full)
    # every val and train image comes from the full training split, none twice, none from test
    as_rows = lambda ds: {bytes(img.numpy()) + bytes([t]) for img, t in zip(ds.images, ds.targets.tolist(),
                                                                           strict=True)}
    assert as_rows(train) | as_rows(val) <= as_rows(full)
    assert not as_rows(val) & as_rows(test) - as_rows(full)
    counts, full_counts = torch.bincount(val.targets), torch.bincount(full.targets)
    assert ((counts / full_counts) - len(val) / len(full)).abs().max() < 0.01  # stratified
    assert train.info == val.info == test.info  # statistics of the training data, whatever is held out


@pytest.mark.parametrize(("val_split", "expected"), [(100, 100), (0.25, 360), (0.5, 719), (1.0, 1)])
def test_val_split_counts_and_fractions(val_split, expected):
    val = build_dataset("digits", "val", val_split=val_split)
    assert len(val) == expected
    assert len(build_dataset("digits", "train", val_split=val_split)) == 1438 - expected


@pytest.mark.parametrize(("val_split", "message"), [
    (1438, r"val_split 1438 must hold out between 0 and 1437 of the 1438 training images in digits"),
    (-3, r"val_split -3 must hold out between 0"),
    (1.5, r"val_split 1.5 must be a fraction in \(0, 1\) or a whole count"),
    ("many", r"val_split must be a count of images or a fraction in \(0, 1\), got 'many'"),
])
def test_bad_val_split_is_named(val_split, message):
    with pytest.raises(ValueError, match=message):
        build_dataset("digits", "train", val_split=val_split)


def test_val_split_zero_has_no_val_and_unknown_splits_are_named():
    with pytest.raises(ValueError, match=r"digits has no validation split with val_split=0"):
        build_dataset("digits", "val", val_split=0)
    with pytest.raises(ValueError, match=r"unknown split 'dev': use 'train', 'val' \(carved from the training "
                                         r"data\) or 'test'"):
        build_dataset("digits", "dev")


def test_carved_val_has_exactly_the_requested_count():
    from vitkit.data.base import carve_val

    labels = np.array([0] * 7 + [1] * 5 + [2] * 3)
    for count in range(1, 15):
        train_idx, val_idx = carve_val(labels, count)
        assert len(val_idx) == count and len(train_idx) == 15 - count
        assert not set(train_idx) & set(val_idx)


# --- IDX / MNIST family ---


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_round_trips_raw_and_gzip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / name, array)), array)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, gz):
    images, labels = write_mnist_like(tmp_path, gz=gz)
    train, test = build_dataset(f"mnist:{tmp_path}", val_split=0), build_dataset(f"mnist:{tmp_path}", "test")
    assert train.images.shape == (6, 1, 5, 5) and test.images.shape == (4, 1, 5, 5)
    assert torch.equal(train.images[:, 0], torch.from_numpy(images[:6]))
    assert test.targets.tolist() == labels[6:].tolist()
    assert train.info.class_names == tuple("0123456789") and train.info.img_size == 5


def test_truncated_idx_names_file_and_byte_counts(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4)), header_dims=(6, 4, 4))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*needs 112 bytes.*has 96 bytes"):
        read_idx(path)


def test_truncated_gzip_stream_names_file(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((5, 4, 4)))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*damaged gzip"):
        read_idx(path)


def test_idx_header_errors(tmp_path):
    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="not_idx: not an IDX file"):
        read_idx(not_idx)
    floats = tmp_path / "floats"
    floats.write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="floats: IDX element type 0x0d is unsupported"):
        read_idx(floats)


def test_idx_label_out_of_range_names_file(tmp_path):
    write_mnist_like(tmp_path)
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 10]))
    with pytest.raises(ValueError, match=re.escape(str(labels)) + ": label 10 is out of range for 10"):
        build_dataset(f"mnist:{tmp_path}")


def test_idx_count_mismatch_names_both_files(tmp_path):
    write_mnist_like(tmp_path)
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4]))
    images = tmp_path / "train-images-idx3-ubyte.gz"
    message = f"6 images in {re.escape(str(images))}, 5 labels in {re.escape(str(labels))}"
    with pytest.raises(ValueError, match=message):
        build_dataset(f"mnist:{tmp_path}")


def test_missing_fashion_mnist_says_where_and_how_to_install(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))} does not exist.*apt-get install "
                                                f"dataset-fashion-mnist"):
        build_dataset(f"fashion-mnist:{missing}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "t10k-images-idx3-ubyte.gz"))):
        build_dataset(f"fashion-mnist:{tmp_path}", "test")


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_fashion_mnist_real_files():
    full = build_dataset("fashion-mnist", val_split=0)
    train, val, test = (build_dataset("fashion-mnist", split) for split in ("train", "val", "test"))
    assert full.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(full.targets).tolist() == [6000] * 10
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    assert torch.bincount(train.targets).tolist() == [5500] * 10  # 5,000 held out for validation
    assert torch.bincount(val.targets).tolist() == [500] * 10
    assert full.targets[0] == 9 and full.info.class_names[9] == "Ankle boot"
    assert full.info.mean[0] == pytest.approx(full.images.float().mean().item() / 255, abs=1e-3)


# --- image folders ---


def test_folder_auto_split_rgb(tmp_path):
    make_class_folders(tmp_path, RGB_COLORS, per_class=10)
    (tmp_path / "red" / "notes.txt").write_text("not an image extension, so ignored")
    train = build_dataset(f"folder:{tmp_path}", img_size=6, val_split=0)
    test = build_dataset(f"folder:{tmp_path}", "test", img_size=6)
    assert (len(train), len(test)) == (24, 6)
    assert torch.bincount(test.targets).tolist() == [2, 2, 2]
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert train.targets.tolist() == [label for _, label in train.samples]

    info = train.info
    assert info.class_names == ("blue", "green", "red") and info.in_chans == 3 and info.img_size == 6
    assert info.mean == pytest.approx((1 / 3,) * 3, abs=1e-3)
    assert info.std == pytest.approx((np.sqrt(2) / 3,) * 3, abs=1e-3)
    image, label = test[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 6)
    assert image[:, 0, 0].tolist() == list(RGB_COLORS[info.class_names[label]])
    again = build_dataset(f"folder:{tmp_path}", img_size=6, val_split=0)
    assert again.samples == train.samples
    carved_train = build_dataset(f"folder:{tmp_path}", img_size=6, val_split=3)
    carved_val = build_dataset(f"folder:{tmp_path}", "val", img_size=6, val_split=3)
    assert torch.bincount(carved_val.targets).tolist() == [1, 1, 1]
    assert sorted(carved_train.samples + carved_val.samples) == sorted(train.samples)


def test_folder_resizes_shorter_side_and_crops_centre(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # white middle third of a wide image
    (tmp_path / "only").mkdir()
    image.save(tmp_path / "only" / "wide.png")
    ds = build_dataset(f"folder:{tmp_path}", img_size=5, val_split=0)
    centre = ds[0][0]
    assert centre.shape == (3, 5, 5)
    assert centre[:, :, 1:4].min() == 255 and centre.min() > 200  # bicubic softens only the outermost columns


def test_folder_grayscale_and_mixed(tmp_path):
    gray_root, mixed_root = tmp_path / "gray", tmp_path / "mixed"
    make_class_folders(gray_root, {"dark": 30, "light": 220}, per_class=5, mode="L")
    gray = build_dataset(f"folder:{gray_root}", img_size=4)
    assert gray.info.in_chans == 1 and gray[0][0].shape == (1, 4, 4)
    assert gray.info.mean == pytest.approx(((30 + 220) / 2 / 255,), abs=1e-3)

    make_class_folders(mixed_root, {"dark": 30}, per_class=5, mode="L")
    make_class_folders(mixed_root, {"red": (255, 0, 0)}, per_class=5)
    mixed = build_dataset(f"folder:{mixed_root}", img_size=4)
    assert mixed.info.in_chans == 3
    assert mixed[0][0][:, 0, 0].tolist() == [30, 30, 30]


def test_folder_train_and_val_subfolders_val_is_the_test_set(tmp_path):
    """ImageNet's layout: val/ is the held-out evaluation set; validation is carved from train/."""
    make_class_folders(tmp_path / "train", RGB_COLORS, per_class=4)
    make_class_folders(tmp_path / "val", RGB_COLORS, per_class=1)
    train = build_dataset(f"folder:{tmp_path}", img_size=4, val_split=3)
    val = build_dataset(f"folder:{tmp_path}", "val", img_size=4, val_split=3)
    test = build_dataset(f"folder:{tmp_path}", "test", img_size=4)
    assert (len(train), len(val), len(test)) == (9, 3, 3)
    assert all(path.parent.parent.name == "val" for path, _ in test.samples)
    assert all(path.parent.parent.name == "train" for path, _ in train.samples + val.samples)
    assert val.info == train.info == test.info


def test_folder_that_ships_train_val_and_test_uses_all_three(tmp_path):
    for split, per_class in (("train", 4), ("val", 2), ("test", 1)):
        make_class_folders(tmp_path / split, RGB_COLORS, per_class=per_class)
    sets = {split: build_dataset(f"folder:{tmp_path}", split, img_size=4) for split in ("train", "val", "test")}
    assert {split: len(ds) for split, ds in sets.items()} == {"train": 12, "val": 6, "test": 3}
    for split, ds in sets.items():
        assert all(path.parent.parent.name == split for path, _ in ds.samples)
    with pytest.raises(ValueError, match=r"ships its own validation split .*--val-split does not apply"):
        build_dataset(f"folder:{tmp_path}", "train", img_size=4, val_split=2)


def test_folder_split_class_lists_must_match(tmp_path):
    make_class_folders(tmp_path / "train", RGB_COLORS, per_class=2)
    make_class_folders(tmp_path / "test", {"blue": (0, 0, 255), "cyan": (0, 255, 255)}, per_class=2)
    with pytest.raises(ValueError, match=r"only in train: \['green', 'red'\], only in test: \['cyan'\]"):
        build_dataset(f"folder:{tmp_path}")


def test_folder_skips_one_corrupt_file_with_one_warning(tmp_path):
    make_class_folders(tmp_path, {"a": (10, 20, 30), "b": (200, 100, 0)}, per_class=60)
    bad = write_corrupt(tmp_path / "a" / "broken.jpg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build_dataset(f"folder:{tmp_path}", img_size=4, val_split=0)
    assert len(caught) == 1
    assert re.search(f"skipping 1 of 121 image files.*{re.escape(str(bad))}", str(caught[0].message))
    assert len(train) == 96
    assert bad not in {p for p, _ in train.samples}


def test_folder_with_many_corrupt_files_fails(tmp_path):
    make_class_folders(tmp_path, {"a": (10, 20, 30)}, per_class=10)
    bad = write_corrupt(tmp_path / "a" / "broken1.png")
    write_corrupt(tmp_path / "a" / "broken2.png")
    with pytest.raises(ValueError, match=rf"2 of 12 image files .*\(16\.7%\).*{re.escape(str(bad))}"):
        build_dataset(f"folder:{tmp_path}")


def test_folder_structure_errors(tmp_path):
    make_class_folders(tmp_path / "data", {"a": (1, 2, 3)}, per_class=2)
    empty = tmp_path / "data" / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"class folder {re.escape(str(empty))} has no"):
        build_dataset(f"folder:{tmp_path / 'data'}")
    (tmp_path / "flat").mkdir()
    save_image(tmp_path / "flat" / "loose.png", (0, 0, 0))
    with pytest.raises(ValueError, match=f"no class folders in {re.escape(str(tmp_path / 'flat'))}"):
        build_dataset(f"folder:{tmp_path / 'flat'}")
    with pytest.raises(FileNotFoundError, match="image folder .*missing does not exist"):
        build_dataset(f"folder:{tmp_path / 'missing'}")


# --- CIFAR ---


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_fake_batches(tmp_path, protocol):
    for i in range(1, 6):
        batch = tmp_path / f"data_batch_{i}"
        write_cifar_batch(batch, cifar_images(2, 6 * i), [i, i + 1], "labels", protocol)
    write_cifar_batch(tmp_path / "test_batch", cifar_images(3, 100), [7, 8, 9], "labels", protocol)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (tmp_path / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": names, "num_vis": 3072}, f, protocol=protocol)

    train, test = build_dataset(f"cifar10:{tmp_path}", val_split=0), build_dataset(f"cifar10:{tmp_path}", "test")
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.targets.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert test.images[1, :, 5, 7].tolist() == [103, 104, 105]  # planes are red, green, blue in that order
    assert test.targets.tolist() == [7, 8, 9]
    assert train.info.class_names == tuple(names) and train.info.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_fake_batches(tmp_path):
    write_cifar_batch(tmp_path / "train", cifar_images(4, 0), [0, 99, 50, 3], "fine_labels", 4)
    write_cifar_batch(tmp_path / "test", cifar_images(2, 30), [5, 6], "fine_labels", 4)
    names = [f"class{i}" for i in range(100)]
    with (tmp_path / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": names[:20]}, f)
    train, test = build_dataset(f"cifar100:{tmp_path}", val_split=0), build_dataset(f"cifar100:{tmp_path}", "test")
    assert train.info.num_classes == 100 and train.info.std == (0.2673, 0.2564, 0.2762)
    assert train.targets.tolist() == [0, 99, 50, 3] and len(test) == 2


class RunsCode:
    def __reduce__(self):
        return print, ("this must never run",)


def test_cifar_refuses_pickles_that_would_run_code(tmp_path):
    with (tmp_path / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": ["a"], "payload": RunsCode()}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        build_dataset(f"cifar10:{tmp_path}")


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(f"cifar10:{tmp_path / 'missing'}")
    with (tmp_path / "meta").open("wb") as f:
        pickle.dump({"fine_label_names": ["a", "b"]}, f)
    write_cifar_batch(tmp_path / "train", cifar_images(2, 0), [0, 2], "fine_labels", 4)
    with pytest.raises(ValueError, match=r"train: labels must lie in \[0, 2\), found 0..2"):
        build_dataset(f"cifar100:{tmp_path}")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "test"))):
        build_dataset(f"cifar100:{tmp_path}", "test")


# --- synthetic ---


def test_synthetic_is_deterministic_balanced_and_sized():
    train, test = build_dataset("synthetic", val_split=0), build_dataset("synthetic", "test")
    assert (len(train), len(test)) == (512, 128)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.bincount(train.targets).max() - torch.bincount(train.targets).min() <= 1
    assert torch.equal(build_dataset("synthetic", val_split=0).images, train.images)
    assert not torch.equal(build_dataset("synthetic", seed=1, val_split=0).images, train.images)
    assert not torch.equal(train.images[:128], test.images)

    small = build_dataset("synthetic:40", "test", img_size=16)
    assert small.images.shape == (10, 3, 16, 16) and small.info.img_size == 16


def test_synthetic_is_learnable():
    train, test = build_dataset("synthetic"), build_dataset("synthetic", "test")
    # nearest class centroid in pixel space: if this works, a tiny ViT will get there within a few steps
    pixels = train.images.flatten(1).float()
    centroids = torch.stack([pixels[train.targets == c].mean(0) for c in range(10)])
    predictions = torch.cdist(test.images.flatten(1).float(), centroids).argmin(1)
    assert (predictions == test.targets).float().mean() > 0.8


# --- specs ---


def test_list_datasets():
    expected = ["cifar10", "cifar100", "digits", "fashion-mnist", "fashion-mnist-c", "folder", "mnist", "synthetic"]
    assert list_datasets() == expected


def test_unknown_dataset_lists_valid_names_and_suggests_closest():
    message = r"unknown dataset 'fashon-mnist'\. Did you mean 'fashion-mnist'\?"
    with pytest.raises(ValueError, match=message) as err:
        build_dataset("fashon-mnist")
    for name in list_datasets():
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("digits", {"split": "holdout"}, r"split 'holdout': use 'train', 'val' \(carved from the training data\)"),
        ("cifar10", {}, "dataset 'cifar10' needs a path: write it as 'cifar10:PATH'"),
        ("digits:/tmp", {}, "dataset 'digits' takes no argument"),
        ("digits", {"img_size": 32}, "digits images are 8x8, not 32: resize in the transforms"),
        ("synthetic:many", {}, "expected synthetic:N"),
        ("synthetic:0", {}, "must be positive"),
    ],
)
def test_bad_specs(spec, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(spec, **kwargs)


def test_val_is_not_the_test_split():
    val, test = build_dataset("digits", "val"), build_dataset("digits", "test")
    assert len(val) != len(test) or not torch.equal(val.images, test.images)


def test_dataset_info_checks_itself():
    with pytest.raises(ValueError, match="in_chans=3 needs that many mean/std values"):
        DatasetInfo("x", 2, ("a", "b"), in_chans=3, img_size=8, mean=(0.5,), std=(0.5,))
