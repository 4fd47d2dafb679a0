"""Tests for search/evaluation/data.py: real torchvision loading on tiny files, digits, BatchLoader.

No test needs the network: CIFAR files are written in torchvision's pickle format into
tmp_path, and only the md5 check is bypassed (file existence is still checked).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from search.evaluation.data import DATASETS, BatchLoader, DataError, Dataset, load_dataset

CIFAR10_TRAIN_PER_BATCH = 4  # 5 batches -> 20 training images
CIFAR10_TEST = 6
CIFAR100_TRAIN = 24
CIFAR100_TEST = 5


# ----------------------------------------------------------------------------- helpers


def _images(n: int, start: int) -> np.ndarray:
    """(n, 3072) uint8 rows in CIFAR layout (channel-major, then row, then column).

    Each image carries its global id in pixel (c=0, y=0, x=0) and a known pattern:
    channel c, row 5, column 7 holds 10*c + 3, so the pixel layout can be checked.
    """
    rng = np.random.default_rng(start)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    for i in range(n):
        data[i, 0] = start + i
        for c in range(3):
            data[i, c * 1024 + 5 * 32 + 7] = 10 * c + 3
    return data


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(5):
        start = b * CIFAR10_TRAIN_PER_BATCH
        ids = range(start, start + CIFAR10_TRAIN_PER_BATCH)
        _dump(
            folder / f"data_batch_{b + 1}",
            {"data": _images(CIFAR10_TRAIN_PER_BATCH, start), "labels": [i % 10 for i in ids]},
        )
    _dump(folder / "test_batch", {"data": _images(CIFAR10_TEST, 100), "labels": [i % 10 for i in range(CIFAR10_TEST)]})
    _dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return folder


def _write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _dump(
        folder / "train",
        {
            "data": _images(CIFAR100_TRAIN, 0),
            "fine_labels": [(7 * i) % 100 for i in range(CIFAR100_TRAIN)],
            "coarse_labels": [0] * CIFAR100_TRAIN,
        },
    )
    _dump(
        folder / "test",
        {
            "data": _images(CIFAR100_TEST, 100),
            "fine_labels": [99 - i for i in range(CIFAR100_TEST)],
            "coarse_labels": [0] * CIFAR100_TEST,
        },
    )
    _dump(
        folder / "meta",
        {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]},
    )
    return folder


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bypass only the md5 comparison; a missing file still fails the check.

    torchvision calls the module-level ``check_integrity`` both from
    ``CIFAR10._check_integrity`` (batches) and ``_load_meta`` (meta file), so patching it
    covers every md5 check and nothing else.
    """
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def blocked(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", blocked)
    return calls


def _ids(images: torch.Tensor) -> list[int]:
    return images[:, 0, 0, 0].tolist()


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_loads_real_format(tmp_path: Path, no_md5: None) -> None:
    _write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path, val_size=5, download=False)
    assert isinstance(ds, Dataset) and ds.name == "cifar10" and ds.num_classes == 10 and ds.hflip
    assert ds.train_images.shape == (15, 3, 32, 32) and ds.val_images.shape == (5, 3, 32, 32)
    assert ds.test_images.shape == (CIFAR10_TEST, 3, 32, 32)
    for t in (ds.train_images, ds.val_images, ds.test_images):
        assert t.dtype == torch.uint8 and t.device.type == "cpu"
    for t in (ds.train_labels, ds.val_labels, ds.test_labels):
        assert t.dtype == torch.int64 and t.dim() == 1
    # pixel layout: channel c, row 5, column 7 was written as 10*c+3
    for c in range(3):
        assert (ds.test_images[:, c, 5, 7] == 10 * c + 3).all()
        assert (ds.train_images[:, c, 5, 7] == 10 * c + 3).all()
    assert _ids(ds.test_images) == list(range(100, 100 + CIFAR10_TEST))
    assert ds.test_labels.tolist() == [i % 10 for i in range(CIFAR10_TEST)]
    # labels travel with their images through the split
    for images, labels in ((ds.train_images, ds.train_labels), (ds.val_images, ds.val_labels)):
        assert [i % 10 for i in _ids(images)] == labels.tolist()


def test_cifar10_split_is_seeded_disjoint_and_complete(tmp_path: Path, no_md5: None) -> None:
    _write_cifar10(tmp_path)
    a = load_dataset("cifar10", tmp_path, val_size=5, split_seed=1, download=False)
    b = load_dataset("cifar10", tmp_path, val_size=5, split_seed=1, download=False)
    c = load_dataset("cifar10", tmp_path, val_size=5, split_seed=2, download=False)
    assert torch.equal(a.val_images, b.val_images) and torch.equal(a.train_labels, b.train_labels)
    assert set(_ids(a.val_images)) != set(_ids(c.val_images))
    train, val = set(_ids(a.train_images)), set(_ids(a.val_images))
    assert not train & val and train | val == set(range(20))
    full = load_dataset("cifar10", tmp_path, full_train=True, download=False)
    assert _ids(full.train_images) == list(range(20))  # file order kept
    assert full.val_images.shape == (0, 3, 32, 32) and full.val_labels.shape == (0,)


def test_cifar_stats_come_from_train_split(tmp_path: Path, no_md5: None) -> None:
    _write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path, val_size=5, download=False)
    x = ds.train_images.double() / 255
    assert ds.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert ds.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)


def test_cifar100_loads_real_format(tmp_path: Path, no_md5: None) -> None:
    _write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path, val_size=4, split_seed=3, download=False)
    assert ds.num_classes == 100 and ds.hflip
    assert len(ds.train_images) == 20 and len(ds.val_images) == 4 and len(ds.test_images) == CIFAR100_TEST
    assert ds.test_labels.tolist() == [99 - i for i in range(CIFAR100_TEST)]
    assert (ds.test_images[:, 2, 5, 7] == 23).all()
    train, val = set(_ids(ds.train_images)), set(_ids(ds.val_images))
    assert not train & val and train | val == set(range(CIFAR100_TRAIN))
    for images, labels in ((ds.train_images, ds.train_labels), (ds.val_images, ds.val_labels)):
        assert [(7 * i) % 100 for i in _ids(images)] == labels.tolist()


def test_default_val_size_too_big_for_tiny_cifar(tmp_path: Path, no_md5: None) -> None:
    _write_cifar10(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, download=False)  # default 5000 >= 20 images
    assert "--val-size 5000 does not fit a training set of 20 images" in _one_line(err)
    for bad in (0, 20, -1):
        with pytest.raises(DataError):
            load_dataset("cifar10", tmp_path, val_size=bad, download=False)


def test_missing_files_without_download(tmp_path: Path, no_network: list[str]) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path / "nowhere", download=False)
    msg = _one_line(err)
    assert str((tmp_path / "nowhere").resolve()) in msg
    assert "--dataset digits" in msg and "cifar-10-batches-py" in msg
    assert no_network == []  # download=False must not even try


def test_missing_files_download_blocked(tmp_path: Path, no_network: list[str]) -> None:
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(DataError) as err:
            load_dataset(name, tmp_path, download=True)
        msg = _one_line(err)
        assert "could not be downloaded" in msg and "Network is unreachable" in msg
        assert str(tmp_path.resolve()) in msg and folder in msg and "--dataset digits" in msg
    assert len(no_network) == 2


def test_md5_mismatch_reported_as_corrupt(tmp_path: Path, no_network: list[str]) -> None:
    _write_cifar10(tmp_path)  # real md5 check left on: tiny files never match
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, val_size=5, download=False)
    assert "corrupt" in _one_line(err)
    assert no_network == []


def test_unreadable_pickle_reported_as_corrupt(tmp_path: Path, no_md5: None) -> None:
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, val_size=5, download=False)
    msg = _one_line(err)
    assert "corrupt" in msg and str(folder) in msg


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    msg = _one_line(err)
    assert all(name in msg for name in DATASETS)
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- digits


def test_digits_sizes_and_format(tmp_path: Path) -> None:
    ds = load_dataset("digits", tmp_path)
    assert ds.num_classes == 10 and not ds.hflip
    assert len(ds.train_images) + len(ds.val_images) + len(ds.test_images) == 1797
    assert len(ds.test_images) == 360 and len(ds.val_images) == round(0.2 * 1437)
    for t in (ds.train_images, ds.val_images, ds.test_images):
        assert t.shape[1:] == (3, 32, 32) and t.dtype == torch.uint8
        assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 0], t[:, 2])
    assert int(ds.train_images.max()) > 200 and int(ds.train_images.min()) == 0
    assert set(ds.test_labels.tolist()) == set(range(10)) == set(ds.train_labels.tolist())
    assert len(ds.mean) == 3 and all(s > 0 for s in ds.std)


def test_digits_test_split_independent_of_split_seed(tmp_path: Path) -> None:
    a = load_dataset("digits", tmp_path, split_seed=0)
    b = load_dataset("digits", tmp_path, split_seed=1)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.val_labels, b.val_labels) or not torch.equal(a.val_images, b.val_images)
    full = load_dataset("digits", tmp_path, full_train=True)
    assert len(full.train_images) == 1437 and len(full.val_images) == 0


# ----------------------------------------------------------------------------- BatchLoader


def _indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images whose label is their index, to track each sample."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return images, torch.arange(n)


IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_eval_loader_order_shapes_and_normalization(tmp_path: Path) -> None:
    ds = load_dataset("digits", tmp_path)
    loader = BatchLoader(ds.train_images, ds.train_labels, batch_size=100, train=False, mean=ds.mean, std=ds.std)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(ds.train_images) // 100)
    x, y = batches[0]
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    images = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), ds.train_labels)
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    expected = (ds.train_images.float() / 255 - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(images, expected, atol=1e-5)
    again = torch.cat([b[0] for b in loader])
    assert torch.equal(images, again)


def test_eval_covers_every_sample_once_no_drop() -> None:
    images, labels = _indexed(10)
    loader = BatchLoader(images, labels, batch_size=4, train=False, **IDENTITY)
    sizes = [len(y) for _, y in loader]
    assert sizes == [4, 4, 2] and len(loader) == 3
    assert torch.cat([y for _, y in loader]).tolist() == list(range(10))


def test_train_shuffles_and_is_reproducible() -> None:
    images, labels = _indexed(64)

    def make(seed: int) -> BatchLoader:
        return BatchLoader(images, labels, batch_size=16, train=True, hflip=True, seed=seed, **IDENTITY)

    a, b, c = make(5), make(5), make(6)
    ep_a1, ep_b1, ep_c1 = list(a), list(b), list(c)
    for (xa, ya), (xb, yb) in zip(ep_a1, ep_b1):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order_a = torch.cat([y for _, y in ep_a1])
    assert sorted(order_a.tolist()) == list(range(64)) and order_a.tolist() != list(range(64))
    assert not torch.equal(order_a, torch.cat([y for _, y in ep_c1]))
    ep_a2 = list(a)  # next epoch: a new permutation
    assert not torch.equal(order_a, torch.cat([y for _, y in ep_a2]))


def test_train_drop_last_behaviour() -> None:
    images, labels = _indexed(10)
    loader = BatchLoader(images, labels, batch_size=4, train=True, **IDENTITY)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]
    keep = BatchLoader(images, labels, batch_size=4, train=True, drop_last=False, **IDENTITY)
    assert len(keep) == 3 and sorted(torch.cat([y for _, y in keep]).tolist()) == list(range(10))
    small = BatchLoader(images[:3], labels[:3], batch_size=4, train=True, **IDENTITY)
    assert len(small) == 1 and [len(y) for _, y in small] == [3]
    empty = BatchLoader(images[:0], labels[:0], batch_size=4, train=False, **IDENTITY)
    assert len(empty) == 0 and list(empty) == []


def _bright_pixel_batch(n: int, row: int, col: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, :, row, col] = 255
    return images, torch.zeros(n, dtype=torch.int64)


def test_random_crop_shifts_content_within_padding() -> None:
    pad = 4
    images, labels = _bright_pixel_batch(128, 16, 16)
    loader = BatchLoader(images, labels, batch_size=128, train=True, crop_padding=pad, hflip=False, seed=1, **IDENTITY)
    ((x, _),) = list(loader)
    shifts = set()
    for img in x:
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
        hits = (img[0] == 1.0).nonzero().tolist()
        assert len(hits) == 1 and int((img[0] > 0).sum()) == 1  # moved, not blurred; zero padding
        r, c = hits[0]
        assert abs(r - 16) <= pad and abs(c - 16) <= pad
        shifts.add((r - 16, c - 16))
    assert len(shifts) > 20  # offsets really vary, in both axes
    assert {dr for dr, _ in shifts} == set(range(-pad, pad + 1)) == {dc for _, dc in shifts}


def test_corner_content_can_be_cropped_to_zero_padding() -> None:
    images, labels = _bright_pixel_batch(64, 0, 0)
    images = 255 - images  # white image with one black pixel at the corner
    loader = BatchLoader(images, labels, batch_size=64, train=True, crop_padding=4, seed=0, **IDENTITY)
    ((x, _),) = list(loader)
    # shifted-in border must be zeros (padding), so some outputs have zero rows/cols
    assert any(bool((img[0, 0] == 0).all() or (img[0, :, 0] == 0).all()) for img in x)


@pytest.mark.parametrize("hflip", [False, True])
def test_flip_only_when_enabled(hflip: bool) -> None:
    images, labels = _bright_pixel_batch(64, 10, 5)
    loader = BatchLoader(images, labels, batch_size=64, train=True, crop_padding=0, hflip=hflip, seed=0, **IDENTITY)
    ((x, _),) = list(loader)
    cols = [(img[0] == 1.0).nonzero().tolist() for img in x]
    assert all(len(h) == 1 and h[0][0] == 10 for h in cols)
    seen = {h[0][1] for h in cols}
    assert seen == ({5, 26} if hflip else {5})


def test_eval_mode_never_augments() -> None:
    images, labels = _bright_pixel_batch(32, 16, 3)
    loader = BatchLoader(images, labels, batch_size=8, train=False, hflip=True, crop_padding=4, **IDENTITY)
    out = torch.cat([x for x, _ in loader])
    assert torch.equal(out, images.float() / 255)


def test_channels_last_output() -> None:
    images, labels = _indexed(8)
    for train in (False, True):
        loader = BatchLoader(images, labels, batch_size=4, train=train, channels_last=True, **IDENTITY)
        for x, _ in loader:
            assert x.is_contiguous(memory_format=torch.channels_last) and x.shape == (4, 3, 32, 32)
    plain = BatchLoader(images, labels, batch_size=4, train=False, **IDENTITY)
    assert all(x.is_contiguous() for x, _ in plain)


def test_data_is_moved_once_and_validated() -> None:
    images, labels = _indexed(8)
    loader = BatchLoader(images, labels, batch_size=4, device=torch.device("cpu"), train=True, **IDENTITY)
    assert loader.images.device.type == "cpu" and loader.images.dtype == torch.uint8
    with pytest.raises(ValueError):
        BatchLoader(images.float(), labels, batch_size=4, train=False, **IDENTITY)
    with pytest.raises(ValueError):
        BatchLoader(images, labels[:3], batch_size=4, train=False, **IDENTITY)
