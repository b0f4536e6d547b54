"""Bad data never kills a run: truncated, 16-bit, symlink loops and decompression bombs in folder datasets."""

import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data import build_dataset
from vitkit.data import folder as folder_mod
from vitkit.data.folder import find_images, is_readable_image, load_image, scan_class_folders
from vitkit.data.images import UnreadableImageError, decode_image, to_8bit
from vitkit.evaluation.classification import (
    CONFUSED_CLASSES_SHOWN,
    ClassificationReport,
    most_confused_classes,
    save_confusion_png,
)


def save_noise(path: Path, *, size=(16, 12), seed=0, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def make_dataset(root: Path, classes=("a", "b"), per_class=60, suffix=".png") -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save_noise(root / name / f"{i:03d}{suffix}", seed=c * 1000 + i)


def truncated_jpeg(path: Path) -> Path:
    save_noise(path, size=(64, 64), seed=99)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def build(root: Path, split: str = "train"):
    return build_dataset(f"folder:{root}", split, img_size=4, val_split=0)


def all_samples(root: Path) -> set[Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [build(root, split) for split in ("train", "test")]
    return {p for ds in datasets for p, _ in ds.samples}


# --- truncated files ---


def test_truncated_jpeg_passes_verify_but_is_dropped_at_scan(tmp_path):
    make_dataset(tmp_path, suffix=".jpg")
    bad = truncated_jpeg(tmp_path / "a" / "zz_truncated.jpg")
    with Image.open(bad) as img:
        img.verify()  # why the old scan let it through
    assert not is_readable_image(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build(tmp_path)
    messages = [str(w.message) for w in caught]
    assert messages and all(re.search(rf"skipping 1 of 121 .*{re.escape(str(bad))} \(.*truncated", m)
                                for m in messages)
    assert bad not in {p for p, _ in train.samples} and bad not in all_samples(tmp_path)
    assert all(load_image(p, "RGB", 4).shape == (3, 4, 4) for p, _ in train.samples)


def test_scan_decodes_each_file_once_across_train_and_test(tmp_path, monkeypatch):
    make_dataset(tmp_path, per_class=5)
    calls = []

    def counting(path, mode, **kwargs):
        if kwargs.get("draft"):
            calls.append(path)
        return decode_image(path, mode, **kwargs)

    monkeypatch.setattr(folder_mod, "decode_image", counting)
    all_samples(tmp_path)
    all_samples(tmp_path)
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 10
    again = tmp_path / "a" / "000.png"
    save_noise(again, seed=7, size=(17, 12))  # a changed file (new size and mtime) is decoded again
    all_samples(tmp_path)
    assert calls.count(again) == 2


def test_load_image_names_a_file_broken_after_the_scan(tmp_path):
    path = save_noise(tmp_path / "x.jpg", size=(64, 64))
    assert load_image(path, "RGB", 8).shape == (3, 8, 8)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError, match=rf"cannot read image {re.escape(str(path))}: (?i:.*truncated)"):
        load_image(path, "RGB", 8)
    path.unlink()
    with pytest.raises(OSError, match=rf"cannot read image {re.escape(str(path))}: No such file"):
        load_image(path, "RGB", 8)


def test_unreadable_image_error_survives_pickling():  # DataLoader workers send exceptions back pickled
    import pickle

    err = pickle.loads(pickle.dumps(UnreadableImageError("/x/y.png", "broken")))
    assert isinstance(err, OSError) and str(err) == "cannot read image /x/y.png: broken"


# --- high bit depth ---


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64).round().astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(np.tile(values, (4, 1))).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    row = np.asarray(decode_image(path, "L"))[0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 50
    np.testing.assert_array_equal(row, np.rint(values / 257))
    rgb = np.asarray(decode_image(path, "RGB"))
    assert rgb.shape == (4, 64, 3) and (rgb[0, :, 0] == row).all()
    tensor = load_image(path, "L", 4)  # the centre of the gradient: mid-grey, not white
    assert tensor.dtype == torch.uint8 and 100 < tensor.float().mean() < 155


def test_16bit_folder_dataset_is_grayscale_and_not_white(tmp_path):
    for c, name in enumerate(("dark", "light")):
        for i in range(5):
            (tmp_path / name).mkdir(exist_ok=True)
            level = 8000 if c == 0 else 56000
            Image.fromarray(np.full((6, 6), level + i, np.uint16)).save(tmp_path / name / f"{i}.png")
    train = build(tmp_path)
    assert train.info.in_chans == 1
    means = {int(label): float(image.float().mean()) for image, label in (train[i] for i in range(len(train)))}
    assert means[0] == pytest.approx(8000 / 257, abs=1) and means[1] == pytest.approx(56000 / 257, abs=1)


@pytest.mark.parametrize("mode, dtype, values, expected", [
    ("I;16B", ">u2", [0, 257, 65535], [0, 1, 255]),
    ("I;16L", "<u2", [0, 32896, 65535], [0, 128, 255]),
    ("I", "<i4", [0, 257, 65535], [0, 1, 255]),
    ("I", "<i4", [-5, 500_000, 1_000_000], [0, 128, 255]),  # beyond 16 bits: scaled by the maximum
    ("F", "<f4", [0.0, 0.5, 1.0], [0, 128, 255]),  # fractions of white
    ("F", "<f4", [-3.0, 100.4, 1000.0], [0, 100, 255]),  # 0-255 values, clipped
])
def test_to_8bit_modes(mode, dtype, values, expected):
    img = Image.frombytes(mode, (3, 1), np.array(values, dtype=dtype).tobytes())
    out = to_8bit(img)
    assert out.mode == "L" and np.asarray(out)[0].tolist() == expected


def test_eight_bit_images_are_left_alone():
    img = Image.new("L", (2, 2), 77)
    assert to_8bit(img) is img


# --- symlinks ---


def test_symlink_loops_are_not_classes(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, per_class=3)
    elsewhere = tmp_path / "elsewhere" / "c"
    for i in range(3):
        save_noise(elsewhere / f"{i}.png", seed=50 + i)
    os.symlink(elsewhere, root / "c")  # a class folder kept elsewhere: fine
    os.symlink(root, root / "loop")  # the dataset root again
    os.symlink(tmp_path, root / "up")  # an ancestor of it
    os.symlink(root / "missing", root / "dangling")
    os.symlink(root / "self", root / "self")
    os.symlink(root / "a", root / "a" / "back")  # loops inside a class
    os.symlink(root, root / "b" / "root")
    save_noise(tmp_path / "extra" / "e.png", seed=77)
    os.symlink(tmp_path / "extra", root / "b" / "more")  # a symlinked sub-folder of a class: followed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folders = scan_class_folders(root)
    assert [d.name for d in folders] == ["a", "b", "c"]
    assert [p.name for p in folders[root / "a"]] == ["000.png", "001.png", "002.png"]
    assert [p.relative_to(root / "b").as_posix() for p in folders[root / "b"]] == [
        "000.png", "001.png", "002.png", "more/e.png"]
    assert len(folders[root / "c"]) == 3
    messages = " | ".join(str(w.message) for w in caught)
    for name in ("loop", "up", "dangling", "self", "a/back", "b/root"):
        assert f"skipping {root / name}" in messages
    assert "symlink loop" in messages and "broken or self-referencing symlink" in messages


def test_nested_symlink_loop_through_another_folder_terminates(tmp_path):
    cls = tmp_path / "data" / "a"
    save_noise(cls / "0.png")
    outer = tmp_path / "outer" / "inner"
    save_noise(outer / "1.png", seed=1)
    os.symlink(outer, cls / "in")
    os.symlink(cls, outer / "back")  # a -> outer/inner -> a -> ...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = find_images(cls)
    assert [p.relative_to(cls).as_posix() for p in found] == ["0.png", "in/1.png"]


def test_broken_image_symlink_counts_as_unreadable(tmp_path):
    make_dataset(tmp_path, per_class=60)
    link = tmp_path / "a" / "gone.png"
    os.symlink(tmp_path / "nowhere.png", link)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = build(tmp_path)
    assert any(f"{link} (a broken or self-referencing symlink" in str(w.message) for w in caught)
    assert link not in {p for p, _ in train.samples}


# --- decompression bombs ---


def test_decompression_bombs_are_dropped_at_scan(tmp_path, monkeypatch):
    make_dataset(tmp_path, per_class=100)  # 16x12 = 192 pixels each
    huge = save_noise(tmp_path / "a" / "huge.png", size=(64, 64))  # 4096 pixels: Pillow raises
    large = save_noise(tmp_path / "b" / "large.png", size=(40, 40))  # 1600 pixels: Pillow only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = all_samples(tmp_path)
        train = build(tmp_path)
    assert huge not in samples and large not in samples and len(samples) == 200
    message = str(caught[-1].message)
    assert re.search(rf"skipping 2 of 202 .*{re.escape(str(huge))} \(.*decompression bomb", message)
    assert str(large) in message
    assert not any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)
    assert len(train) > 0


@pytest.mark.parametrize("size", [(64, 64), (40, 40)], ids=["over-twice-the-limit", "between-1x-and-2x"])
def test_load_image_refuses_decompression_bombs(tmp_path, monkeypatch, size):
    path = save_noise(tmp_path / "bomb.png", size=size)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no stray DecompressionBombWarning either
        with pytest.raises(OSError, match=rf"cannot read image {re.escape(str(path))}: .*decompression bomb"):
            load_image(path, "RGB", 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(path, "RGB", 8).shape == (3, 8, 8)


# --- confusion matrix with many classes ---


def test_confusion_png_with_1000_classes_is_bounded_and_quick(tmp_path):
    n = 1000
    rng = np.random.default_rng(0)
    confusion = np.diag(rng.integers(5, 50, n)).astype(np.int64)
    noise = rng.integers(0, 200, (n, n)) == 0  # scattered single confusions
    confusion += noise & ~np.eye(n, dtype=bool)
    planted = [(10, 20, 40), (500, 501, 35), (999, 0, 30), (7, 7 + 1, 25)]
    for i, j, count in planted:
        confusion[i, j] = count
    counts = confusion.sum(axis=1)
    report = ClassificationReport(
        top1=float(np.trace(confusion) / confusion.sum()), top5=0.9, loss=1.0, num_samples=int(confusion.sum()),
        per_class_accuracy=(np.diag(confusion) / counts).tolist(), confusion=confusion,
        class_names=[f"n{i:08d} a rather long imagenet style class name {i}" for i in range(n)],
    )
    start = time.perf_counter()
    save_confusion_png(report, tmp_path / "confusion.png")
    assert time.perf_counter() - start < 20
    with Image.open(tmp_path / "confusion.png") as img:
        assert img.width <= 1400 and img.height <= 1400
    shown = most_confused_classes(confusion, CONFUSED_CLASSES_SHOWN)
    assert len(shown) == CONFUSED_CLASSES_SHOWN and list(shown) == sorted(shown)
    assert {c for i, j, _ in planted for c in (i, j)} <= set(shown.tolist())


def test_most_confused_classes_without_enough_confusions():
    confusion = np.diag(np.full(200, 10))
    confusion[3, 4] = 2
    confusion[5, 6] = 1
    shown = most_confused_classes(confusion, 6)
    assert {3, 4, 5, 6} <= set(shown.tolist())
    assert len(shown) == 6
    assert most_confused_classes(confusion, 6).tolist() == shown.tolist()  # deterministic


def test_confusion_png_small_matrices_still_show_every_class(tmp_path):
    confusion = np.array([[3, 1], [0, 4]])
    report = ClassificationReport(top1=0.875, top5=1.0, loss=0.3, num_samples=8, per_class_accuracy=[0.75, 1.0],
                                  confusion=confusion, class_names=["cat", "dog"])
    save_confusion_png(report, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as img:
        assert img.width == 60 + 2 * 36 + 10
