"""Data sets and a device-resident mini-batch loader for the CIFAR search.

Four data sets are supported:

* ``cifar10`` / ``cifar100`` through :mod:`torchvision.datasets`, read from a local
  ``data_dir``. Offline machines cannot download them, so every failure (files missing,
  download impossible, files corrupt) becomes a one-line :class:`DataError` that says
  where the files must go and how to run without them.
* ``digits``: scikit-learn's ``load_digits`` (1797 8x8 images) ships inside the package,
  which makes it a real, offline data set for quick CPU runs and tests. It is upsampled
  to 3x32x32 so that the CIFAR architectures run on it unchanged.
* ``digits32``: a harder offline proxy generated from the same glyphs
  (:mod:`search.evaluation.digits32`), with a fixed train/validation/test split by source glyph;
  ``val_size`` re-splits its train + validation images at random instead.

Images are kept as uint8 tensors (CIFAR-10 is 150 MB that way) so the whole set can live
on the training device; :class:`BatchLoader` shuffles, augments and normalizes there, in
batches, which makes per-trial data loading essentially free on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from search.settings import DATASET_CLASSES as _CLASSES
from search.settings import DATASETS

__all__ = ["DATASETS", "DataError", "Dataset", "load_dataset", "BatchLoader", "num_classes_of"]


def num_classes_of(name: str) -> int:
    """Classes of a data set, without loading it."""
    key = name.strip().lower()
    if key not in _CLASSES:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return _CLASSES[key]


_CIFAR_DEFAULT_VAL = 5000
_DIGITS_VAL_FRACTION = 0.2
_DIGITS_TEST_FRACTION = 0.2
# The digits test split must never move, whatever split_seed the user picks, so that test
# accuracies of different runs are comparable.
_DIGITS_TEST_SEED = 0
_MIN_STD = 1e-3


class DataError(ValueError):
    """A user-facing data problem; str(err) is ONE line that says what is wrong and how to fix it."""


@dataclass
class Dataset:
    """A data set split into train/val/test, as uint8 NCHW tensors on the CPU.

    ``mean``/``std`` are computed on the train split only (in [0, 1] scale) so that the
    validation and test splits never leak into the normalization.
    """

    name: str
    num_classes: int
    train_images: torch.Tensor  # uint8, (N, 3, 32, 32), CPU
    train_labels: torch.Tensor  # int64, (N,)
    val_images: torch.Tensor  # uint8 (may have 0 rows when full_train=True)
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, float, float]  # per-channel mean of train images in [0,1] scale
    std: tuple[float, float, float]
    hflip: bool  # horizontal flip is a valid augmentation (True for CIFAR, False for digits)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | Path,
    *,
    val_size: int | None = None,
    split_seed: int = 0,
    download: bool = True,
    full_train: bool = False,
) -> Dataset:
    """Load ``name`` and split its training set into train/val.

    ``val_size`` defaults to 5000 images for CIFAR (45k/5k) and to 20% of the training set
    for digits. The split is a seeded random split (``split_seed``), so that repeated
    searches see the same validation set. ``full_train=True`` keeps every training image
    in train and leaves val empty: it is meant for the final retraining, which reports
    test accuracy instead.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key in ("cifar10", "cifar100"):
        pool_x, pool_y, test_x, test_y = _load_cifar(key, data_dir, download=download)
        num_classes, hflip = num_classes_of(key), True
        default_val = _CIFAR_DEFAULT_VAL
    elif key == "digits":
        pool_x, pool_y, test_x, test_y = _load_digits()
        num_classes, hflip = num_classes_of(key), False  # a mirrored digit is a different glyph
        default_val = int(round(_DIGITS_VAL_FRACTION * len(pool_y)))
    elif key == "digits32":
        from search.evaluation.digits32 import load_digits32

        (train_x, train_y), (val_x, val_y), (test_x, test_y) = load_digits32(data_dir)
        pool_x, pool_y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
        num_classes, hflip = num_classes_of(key), False
        default_val = len(val_y)
        if val_size is None and not full_train:  # the fixed, glyph-disjoint split
            return _make_dataset(key, num_classes, hflip, (train_x, train_y), (val_x, val_y), (test_x, test_y))
    else:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")

    train_idx, val_idx = _split_indices(
        len(pool_y),
        default_val if val_size is None else val_size,
        seed=split_seed,
        full_train=full_train,
    )
    return _make_dataset(
        key,
        num_classes,
        hflip,
        (pool_x[train_idx], pool_y[train_idx]),
        (pool_x[val_idx], pool_y[val_idx]),
        (test_x, test_y),
    )


def _make_dataset(key: str, num_classes: int, hflip: bool, train, val, test) -> Dataset:
    """A :class:`Dataset` from (images, labels) splits, normalized by train statistics only."""
    mean, std = _channel_stats(train[0])
    return Dataset(
        name=key,
        num_classes=num_classes,
        train_images=train[0],
        train_labels=train[1],
        val_images=val[0],
        val_labels=val[1],
        test_images=test[0],
        test_labels=test[1],
        mean=mean,
        std=std,
        hflip=hflip,
    )


def _short_reason(err: BaseException, limit: int = 160) -> str:
    """One line naming the exception, so the DataError message stays a single line."""
    text = " ".join(str(err).split()) or "no details"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def _load_cifar(
    key: str, data_dir: str | Path, *, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read CIFAR-10/100 with torchvision, turning every failure into a one-line DataError.

    Missing files and corrupt files are told apart before calling torchvision, because
    torchvision reports both as the same RuntimeError and the fixes differ.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if key == "cifar10" else CIFAR100
    pretty = "CIFAR-10" if key == "cifar10" else "CIFAR-100"
    root = Path(data_dir).expanduser().resolve()
    folder = root / cls.base_folder
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    offline_hint = "put the files there, pass --data-dir, or use --dataset digits to run offline"

    train_set = None
    if missing:
        where = f"{pretty} not found in {root} (expected the extracted '{cls.base_folder}' folder)"
        if not download:
            raise DataError(f"{where} and downloading is disabled: {offline_hint}")
        try:
            train_set = cls(root=str(root), train=True, download=True)
        except Exception as err:  # no network, proxy, disk full, bad archive: all fatal here
            raise DataError(f"{where} and it could not be downloaded ({_short_reason(err)}): {offline_hint}") from err

    try:
        if train_set is None:
            train_set = cls(root=str(root), train=True, download=False)
        test_set = cls(root=str(root), train=False, download=False)
        train_x, train_y = _cifar_tensors(train_set)
        test_x, test_y = _cifar_tensors(test_set)
    except DataError:
        raise
    except Exception as err:  # md5 mismatch, truncated pickle, wrong keys or shapes
        raise DataError(
            f"{pretty} files in {folder} are corrupt or incomplete ({_short_reason(err)}): "
            f"delete that folder and download it again, or pass --data-dir with intact files"
        ) from err

    num_classes = 10 if key == "cifar10" else 100
    for labels in (train_y, test_y):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise DataError(
                f"{pretty} files in {folder} have labels outside 0..{num_classes - 1}: "
                f"the files are corrupt or belong to another data set; replace them"
            )
    return train_x, train_y, test_x, test_y


def _cifar_tensors(ds: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,32,32,3) numpy from torchvision -> contiguous uint8 NCHW tensor + int64 labels."""
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # type: ignore[attr-defined]
    labels = torch.as_tensor(list(ds.targets), dtype=torch.int64)  # type: ignore[attr-defined]
    if images.dtype != torch.uint8 or images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
        raise ValueError(f"unexpected arrays: images {tuple(images.shape)} {images.dtype}, {len(labels)} labels")
    return images, labels


def _load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn digits as 3x32x32 uint8, with a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Values are 0..16; scale to 0..255 before upsampling so rounding happens only once.
    small = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)

    pool_idx, test_idx = train_test_split(
        list(range(len(labels))),
        test_size=_DIGITS_TEST_FRACTION,
        random_state=_DIGITS_TEST_SEED,
        stratify=labels.numpy(),
    )
    pool = torch.as_tensor(sorted(pool_idx), dtype=torch.int64)
    test = torch.as_tensor(sorted(test_idx), dtype=torch.int64)
    return images[pool], labels[pool], images[test], labels[test]


def _split_indices(n: int, val_size: int, *, seed: int, full_train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random train/val index split; indices are sorted to keep the file order."""
    if full_train:
        return torch.arange(n), torch.zeros(0, dtype=torch.int64)
    if isinstance(val_size, bool) or not isinstance(val_size, int):
        raise DataError(f"--val-size must be a whole number of images, got {val_size!r}")
    if not 0 < val_size < n:
        raise DataError(
            f"--val-size {val_size} does not fit a training set of {n} images: choose 1 to {n - 1} "
            "(retrain trains on every image)"
        )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    val_idx, _ = perm[:val_size].sort()
    train_idx, _ = perm[val_size:].sort()
    return train_idx, val_idx


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean/std in [0,1] scale from 256-bin histograms.

    Histograms avoid materializing a float copy of the data (550 MB for CIFAR-10).
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means: list[float] = []
    stds: list[float] = []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = float((hist * values).sum() / total)
        var = float((hist * values.square()).sum() / total) - mean * mean
        means.append(mean)
        stds.append(max(math.sqrt(max(var, 0.0)), _MIN_STD))  # constant channel: avoid /0
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


# --------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------


class BatchLoader:
    """Iterates mini-batches from uint8 tensors kept on `device` (whole dataset resident: CIFAR-10 is 150 MB as uint8, so on a GPU the per-trial data loading cost vanishes). Augmentation (random crop with zero padding, optional horizontal flip) runs on the device, batched, with a torch.Generator seeded per loader so runs are reproducible.

    The generator lives on the CPU (random indices are drawn there and moved), so the same
    seed gives the same batches on every device type. Each ``__iter__`` call is one epoch
    and continues the generator, so epochs differ but a re-created loader replays them.

    ``drop_last`` defaults to True in train mode; it never drops everything: with fewer
    images than ``batch_size`` the single short batch is kept. ``pin_memory`` only affects
    the one-time host-to-GPU copy made in ``__init__``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        hflip: bool = False,
        crop_padding: int = 4,
        seed: int = 0,
        channels_last: bool = False,
        drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images must be a uint8 NCHW tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be 1-D with {len(images)} entries, got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values each, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {tuple(std)}")

        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.hflip = bool(hflip)
        self.crop_padding = int(crop_padding)
        self.channels_last = bool(channels_last)
        n = len(images)
        wanted = self.train if drop_last is None else bool(drop_last)
        self.drop_last = wanted and n >= self.batch_size

        pin = pin_memory and self.device.type == "cuda" and images.device.type == "cpu"
        self.images = self._to_device(images, pin)
        self.labels = self._to_device(labels.to(torch.int64), pin)

        # x_norm = (x/255 - mean)/std = x * scale + shift, one fused multiply-add per batch.
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).view(1, -1, 1, 1).to(self.device)
        self._generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def _to_device(self, tensor: torch.Tensor, pin: bool) -> torch.Tensor:
        """Copy once to the device; pinned memory makes the one-off copy to a GPU faster."""
        if pin:
            return tensor.contiguous().pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device).contiguous()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffling/augmentation state, for checkpoints that resume mid-training exactly."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._generator.set_state(state["generator"])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        bs = self.batch_size
        # non_blocking: a copy from pageable memory is staged at once, without waiting on the GPU
        order = torch.randperm(n, generator=self._generator).to(self.device, non_blocking=True) if self.train else None
        for b in range(len(self)):
            lo, hi = b * bs, min((b + 1) * bs, n)
            if order is not None:
                idx = order[lo:hi]
                x = self._augment(self.images[idx])
                y = self.labels[idx]
            else:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            yield self._normalize(x), y

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random crop from the zero-padded batch plus optional flip, as one gather.

        Each output pixel (i, j) of image k reads padded[k, :, dy_k + i, dx_k + j]; a
        flipped image reads column dx_k + (W-1-j) instead, so cropping and flipping cost a
        single indexing op in uint8 with no per-image Python loop.
        """
        p = self.crop_padding
        if p == 0 and not self.hflip:
            return x
        count, channels, height, width = x.shape
        gen = self._generator
        dy = torch.randint(0, 2 * p + 1, (count,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (count,), generator=gen)
        rows = dy[:, None] + torch.arange(height)[None, :]  # (B, H)
        cols_fwd = torch.arange(width)[None, :]
        if self.hflip:
            flip = torch.rand(count, generator=gen) < 0.5
            cols_fwd = torch.where(flip[:, None], width - 1 - cols_fwd, cols_fwd)
        cols = dx[:, None] + cols_fwd  # (B, W)
        rows, cols = rows.to(self.device, non_blocking=True), cols.to(self.device, non_blocking=True)

        padded = F.pad(x, (p, p, p, p)) if p > 0 else x
        k = torch.arange(count, device=self.device)[:, None, None, None]
        c = torch.arange(channels, device=self.device)[None, :, None, None]
        return padded[k, c, rows[:, None, :, None], cols[:, None, None, :]]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self._shift, x.to(torch.float32), self._scale)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out
