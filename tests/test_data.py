"""Tests of benchmark.data: digits, synthetic, and the CIFAR / STL-10 readers on small files written
here in the real on-disk formats (pickles / column-major .bin files, just fewer images)."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.data import DATASETS, DataError, Dataset, load_dataset, make_synthetic

# ---- helpers: write datasets in the real formats --------------------------------------------


def _cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in np.arange(n) % num_classes]
    rng.shuffle(labels)
    return data, labels


def _dump(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are protocol-2 pickles


def write_cifar10(root: Path, per_batch: int = 40, n_test: int = 50) -> dict[str, object]:
    """cifar-10-batches-py with data_batch_1..5, test_batch and batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train_data, train_labels = [], []
    for i in range(1, 6):
        data, labels = _cifar_arrays(per_batch, 10, seed=i)
        _dump(
            base / f"data_batch_{i}",
            {
                b"batch_label": b"training batch",
                b"labels": labels,
                b"data": data,
                b"filenames": [b"x.png"] * per_batch,
            },
        )
        train_data.append(data)
        train_labels += labels
    test_data, test_labels = _cifar_arrays(n_test, 10, seed=99)
    _dump(
        base / "test_batch",
        {b"batch_label": b"testing batch", b"labels": test_labels, b"data": test_data},
    )
    _dump(
        base / "batches.meta",
        {
            b"label_names": [b"c%d" % i for i in range(10)],
            b"num_cases_per_batch": per_batch,
            b"num_vis": 3072,
        },
    )
    return {
        "train": (np.concatenate(train_data), np.array(train_labels)),
        "test": (test_data, np.array(test_labels)),
        "base": base,
    }


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100) -> dict[str, object]:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    data, labels = _cifar_arrays(n_train, 100, seed=1)
    _dump(
        base / "train",
        {
            b"filenames": [],
            b"batch_label": b"training batch 1 of 1",
            b"fine_labels": labels,
            b"coarse_labels": [v // 5 for v in labels],
            b"data": data,
        },
    )
    test_data, test_labels = _cifar_arrays(n_test, 100, seed=2)
    _dump(
        base / "test",
        {
            b"fine_labels": test_labels,
            b"coarse_labels": [v // 5 for v in test_labels],
            b"data": test_data,
        },
    )
    _dump(
        base / "meta",
        {
            b"fine_label_names": [b"f%d" % i for i in range(100)],
            b"coarse_label_names": [b"c%d" % i for i in range(20)],
        },
    )
    return {
        "train": (data, np.array(labels)),
        "test": (test_data, np.array(test_labels)),
        "base": base,
    }


def _stl_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)


def _write_stl_x(path: Path, x: np.ndarray) -> None:
    # STL-10 stores each channel column-major: the file holds x[n, c, w, h]
    np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tofile(path)


def write_stl10(
    root: Path, n_train: int = 50, n_test: int = 40, n_unlabeled: int = 30
) -> dict[str, object]:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    out: dict[str, object] = {"base": base}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        x = _stl_images(n, seed)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)  # labels 1..10 on disk
        _write_stl_x(base / f"{split}_X.bin", x)
        y.tofile(base / f"{split}_y.bin")
        out[split] = (x, y.astype(np.int64) - 1)
    xu = _stl_images(n_unlabeled, 3)
    _write_stl_x(base / "unlabeled_X.bin", xu)
    (base / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    out["unlabeled"] = xu
    return out


def _rows(x: torch.Tensor) -> list[bytes]:
    return [img.numpy().tobytes() for img in x]


def _check_split_of(
    ds_x: torch.Tensor, ds_y: torch.Tensor, orig_x: np.ndarray, orig_y: np.ndarray
) -> None:
    """Every (image, label) of the split is one of the originals, bit for bit."""
    lookup = {img.tobytes(): int(lab) for img, lab in zip(orig_x, orig_y)}
    for img, lab in zip(_rows(ds_x), ds_y.tolist()):
        assert img in lookup, "image not found among the originals (pixels changed?)"
        assert lookup[img] == lab


def _check_dataset(ds: Dataset) -> None:
    for x, y in ((ds.train_x, ds.train_y), (ds.val_x, ds.val_y), (ds.test_x, ds.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape[0] == y.shape[0] and x.shape[1:] == ds.train_x.shape[1:]
    assert ds.pretrain_x.dtype == torch.uint8
    assert len(ds.mean) == len(ds.std) == 3
    assert all(0 < m < 1 for m in ds.mean) and all(0 < s < 1 for s in ds.std)


# ---- names and missing data -----------------------------------------------------------------


def test_unknown_name_suggests() -> None:
    with pytest.raises(DataError) as e:
        load_dataset("cifar-10")
    msg = str(e.value)
    assert "did you mean 'cifar10'" in msg
    assert all(n in msg for n in DATASETS)


@pytest.mark.parametrize(
    "name, folder",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("stl10", "stl10_binary"),
    ],
)
def test_missing_directory_says_how_to_fix(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(name, data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / folder) in msg and "--download" in msg and "--data-dir" in msg


# ---- digits ---------------------------------------------------------------------------------


def test_digits_shapes_splits_and_coverage() -> None:
    ds = load_dataset("digits")
    _check_dataset(ds)
    assert ds.name == "digits" and ds.num_classes == 10
    assert (ds.image_size, ds.channels) == (16, 3)
    assert (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (1257, 180, 360)
    assert ds.pretrain_x is ds.train_x
    for y in (ds.train_y, ds.val_y, ds.test_y):
        assert set(y.tolist()) == set(range(10))
    assert torch.bincount(ds.val_y).tolist() == [18] * 10  # stratified
    assert torch.bincount(ds.test_y).min() >= 35 and torch.bincount(ds.test_y).max() <= 37
    # three identical channels, full uint8 range used
    assert torch.equal(ds.train_x[:, 0], ds.train_x[:, 1]) and torch.equal(
        ds.train_x[:, 0], ds.train_x[:, 2]
    )
    assert int(ds.train_x.max()) == 255 and int(ds.train_x.min()) == 0


def test_digits_deterministic_partition_independent_of_seed() -> None:
    a = load_dataset("digits")
    b = load_dataset("digits", seed=123)
    for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    # the three splits partition the 1,797 images: as a multiset they are exactly the full set
    from sklearn.datasets import load_digits

    assert len(a.train_x) + len(a.val_x) + len(a.test_x) == len(load_digits().images)
    whole = load_dataset("digits", val_size=0)
    all_rows = Counter(_rows(torch.cat([a.train_x, a.val_x, a.test_x])))
    assert all_rows == Counter(_rows(torch.cat([whole.train_x, whole.test_x])))
    # no image is both in two splits unless it is also duplicated in the source
    src = Counter(_rows(torch.cat([whole.train_x, whole.test_x])))
    for s1, s2 in ((a.train_x, a.val_x), (a.train_x, a.test_x), (a.val_x, a.test_x)):
        shared = set(_rows(s1)) & set(_rows(s2))
        assert all(src[r] > 1 for r in shared)


def test_digits_32() -> None:
    ds = load_dataset("digits", image_size=32)
    assert ds.train_x.shape[1:] == (3, 32, 32) and len(ds.test_x) == 360


# ---- synthetic ------------------------------------------------------------------------------


def test_synthetic_sizes_determinism_and_learnable() -> None:
    ds = make_synthetic(n_train=300, n_val=50, n_test=200, num_classes=5, image_size=8, seed=1)
    _check_dataset(ds)
    assert (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (300, 50, 200)
    assert ds.train_x.shape[1:] == (3, 8, 8) and ds.num_classes == 5
    again = make_synthetic(n_train=300, n_val=50, n_test=200, num_classes=5, image_size=8, seed=1)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
    other = make_synthetic(n_train=300, n_val=50, n_test=200, num_classes=5, image_size=8, seed=2)
    assert not torch.equal(ds.train_x, other.train_x)
    default = load_dataset("synthetic")
    assert (len(default.train_x), len(default.val_x), len(default.test_x)) == (1000, 200, 500)
    assert default.train_x.shape[1:] == (3, 16, 16)

    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(
        ds.train_x.flatten(1).float().numpy() / 255, ds.train_y.numpy()
    )
    assert clf.score(ds.test_x.flatten(1).float().numpy() / 255, ds.test_y.numpy()) > 0.8


# ---- CIFAR ----------------------------------------------------------------------------------


def test_cifar10_round_trip(tmp_path: Path) -> None:
    ref = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path, val_size=20)
    _check_dataset(ds)
    assert (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (180, 20, 50)
    assert ds.num_classes == 10 and ds.train_x.shape[1:] == (3, 32, 32)
    assert torch.bincount(ds.val_y, minlength=10).tolist() == [2] * 10
    test_data, test_labels = ref["test"]
    # test split in file order, pixels exact: row = R(32x32) G B, each row-major
    assert torch.equal(ds.test_x, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)))
    assert int(ds.test_x[0, 1, 2, 3]) == int(test_data[0, 1024 + 2 * 32 + 3])
    assert ds.test_y.tolist() == test_labels.tolist()
    train_data, train_labels = ref["train"]
    imgs = train_data.reshape(-1, 3, 32, 32)
    _check_split_of(ds.train_x, ds.train_y, imgs, train_labels)
    _check_split_of(ds.val_x, ds.val_y, imgs, train_labels)
    assert not set(_rows(ds.train_x)) & set(_rows(ds.val_x))
    assert torch.equal(ds.pretrain_x, ds.train_x)
    # fixed split: same on reload, with any seed; a fraction works too
    again = load_dataset("cifar10", data_dir=tmp_path, val_size=20, seed=7)
    assert torch.equal(ds.val_x, again.val_x)
    assert len(load_dataset("cifar10", data_dir=tmp_path, val_size=0.1).val_x) == 20
    # statistics of train_x
    mean = ds.train_x.double().div(255).mean((0, 2, 3))
    assert torch.allclose(torch.tensor(ds.mean, dtype=torch.float64), mean)


def test_cifar100_round_trip(tmp_path: Path) -> None:
    ref = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path, val_size=100)
    _check_dataset(ds)
    assert ds.num_classes == 100 and (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (
        200,
        100,
        100,
    )
    assert torch.bincount(ds.val_y, minlength=100).tolist() == [1] * 100
    test_data, test_labels = ref["test"]
    assert torch.equal(ds.test_x, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)))
    assert ds.test_y.tolist() == test_labels.tolist()
    train_data, train_labels = ref["train"]
    _check_split_of(ds.train_x, ds.train_y, train_data.reshape(-1, 3, 32, 32), train_labels)


def test_cifar_resize(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=4, n_test=6)
    ds = load_dataset("cifar10", data_dir=tmp_path, val_size=0, image_size=16)
    assert ds.train_x.shape[1:] == (3, 16, 16) and ds.test_x.shape == (6, 3, 16, 16)


def _corrupt_cases() -> list[tuple[str, object]]:
    data, labels = _cifar_arrays(40, 10, seed=5)
    return [
        ("wrong shape", {b"data": data[:, :3000], b"labels": labels}),
        ("wrong dtype", {b"data": data.astype(np.float32), b"labels": labels}),
        ("labels out of range", {b"data": data, b"labels": [10] + labels[1:]}),
        ("negative labels", {b"data": data, b"labels": [-1] + labels[1:]}),
        ("label count", {b"data": data, b"labels": labels[:-1]}),
        ("missing key", {b"data": data}),
        ("not a dict", [data, labels]),
        ("garbage", b"\x00garbage bytes, not a pickle" * 10),
        ("code in pickle", {b"data": data, b"labels": labels, b"x": Path("/")}),
    ]


@pytest.mark.parametrize("case", range(len(_corrupt_cases())), ids=[c[0] for c in _corrupt_cases()])
def test_cifar_corrupt_file_names_the_file(tmp_path: Path, case: int) -> None:
    ref = write_cifar10(tmp_path)
    _, content = _corrupt_cases()[case]
    path = ref["base"] / "data_batch_3"  # type: ignore[operator]
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _dump(path, content)
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(path) in str(e.value)


def test_cifar_missing_file_names_it(tmp_path: Path) -> None:
    ref = write_cifar10(tmp_path)
    (ref["base"] / "test_batch").unlink()  # type: ignore[operator]
    with pytest.raises(DataError, match="test_batch is missing"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---- STL-10 ---------------------------------------------------------------------------------


def test_stl10_round_trip_column_major(tmp_path: Path) -> None:
    ref = write_stl10(tmp_path)
    ds = load_dataset("stl10", data_dir=tmp_path, val_size=10)
    _check_dataset(ds)
    assert ds.num_classes == 10 and ds.train_x.shape[1:] == (3, 96, 96)
    assert (len(ds.train_x), len(ds.val_x), len(ds.test_x)) == (40, 10, 40)
    test_x, test_y = ref["test"]
    assert torch.equal(ds.test_x, torch.from_numpy(test_x))  # transposed back exactly
    assert ds.test_y.tolist() == test_y.tolist()  # 1..10 -> 0..9
    assert set(ds.test_y.tolist()) == set(range(10))
    train_x, train_y = ref["train"]
    _check_split_of(ds.train_x, ds.train_y, train_x, train_y)
    _check_split_of(ds.val_x, ds.val_y, train_x, train_y)
    # pretraining images: the unlabeled split, then train_x
    assert len(ds.pretrain_x) == 30 + 40
    assert torch.equal(ds.pretrain_x[:30], torch.from_numpy(ref["unlabeled"]))
    assert torch.equal(ds.pretrain_x[30:], ds.train_x)


def test_stl10_resize(tmp_path: Path) -> None:
    ref = write_stl10(tmp_path, n_train=20, n_test=10, n_unlabeled=5)
    ds = load_dataset("stl10", data_dir=tmp_path, val_size=0, image_size=32)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.pretrain_x.shape == (25, 3, 32, 32)
    # same as resizing the true images (so the transpose happened before resizing)
    expect = torch.nn.functional.interpolate(
        torch.from_numpy(ref["test"][0]).float(), size=(32, 32), mode="bilinear", antialias=True
    )
    assert (ds.test_x.float() - expect).abs().max() <= 0.5 + 1e-3


@pytest.mark.parametrize(
    "what", ["truncated images", "garbage size", "labels out of range", "label zero", "label count"]
)
def test_stl10_corrupt_file_names_the_file(tmp_path: Path, what: str) -> None:
    ref = write_stl10(tmp_path, n_train=20, n_test=10, n_unlabeled=5)
    base: Path = ref["base"]  # type: ignore[assignment]
    if what == "truncated images":
        path = base / "unlabeled_X.bin"
        path.write_bytes(path.read_bytes()[:-100])
    elif what == "garbage size":
        path = base / "train_X.bin"
        path.write_bytes(b"not an image file")
    elif what == "labels out of range":
        path = base / "test_y.bin"
        y = np.fromfile(path, dtype=np.uint8)
        y[3] = 11
        y.tofile(path)
    elif what == "label zero":
        path = base / "train_y.bin"
        y = np.fromfile(path, dtype=np.uint8)
        y[0] = 0
        y.tofile(path)
    else:
        path = base / "train_y.bin"
        np.fromfile(path, dtype=np.uint8)[:-1].tofile(path)
    with pytest.raises(DataError) as e:
        load_dataset("stl10", data_dir=tmp_path, val_size=0)
    assert str(path) in str(e.value)


def test_bad_val_size(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="val_size"):
        load_dataset("digits", val_size=5000)
    with pytest.raises(DataError, match="val_size"):
        load_dataset("digits", val_size=-0.5)
