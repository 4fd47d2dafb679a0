"""``digits32``: an offline 32x32 colour task built from scikit-learn's digits.

scikit-learn's ``load_digits`` (1797 8x8 grey glyphs) is too easy for an architecture
search: every candidate of the built-in spaces reaches 96-99 %, and two trainings of the
same candidates do not even rank them alike. ``digits32`` turns the same glyphs into a
harder, CIFAR-shaped task (3x32x32 uint8, 10 classes) with label-preserving,
deterministic transforms meant to make capacity matter:

* each image draws one source glyph and warps it with a random affine map (rotation,
  scale, shear, translation) plus a smooth elastic displacement field;
* it is painted in a random colour over a random, low-frequency textured background with a
  bounded contrast, next to smaller, fainter distractor glyphs (clutter) and an occluding
  rectangle, then pixel noise is added.

The source glyphs are split into disjoint train/validation/test pools first (stratified,
fixed seed), so validation and test images never reuse a training glyph. The split is
fixed: 6000 training, 1000 validation and 1000 test images. Generation takes a few
seconds, uses torch ops seeded by a ``torch.Generator`` only, and is cached under
``<data_dir>/digits32/`` (written atomically).

It is a proxy for CIFAR-10, not a substitute: one object class per image on clutter, no
natural textures or intra-class shape variety beyond 1797 handwritten digits, and
6000 training images instead of 50 000. The recipe was calibrated with the quick
preset's training recipe at width 0.25 (``bench/digits32.py``; what was tried is in
``bench/results/digits32_calibration.csv``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from search.files import atomic_torch_save

__all__ = ["Digits32Recipe", "RECIPE", "generate_digits32", "load_digits32"]

# Bump when the generator changes in a way the recipe does not capture: old caches are ignored.
_VERSION = 1


@dataclass(frozen=True)
class Digits32Recipe:
    """Sizes and difficulty of the generated task (part of the cache key)."""

    train: int = 6000
    val: int = 1000
    test: int = 1000
    seed: int = 0
    rotation_deg: float = 20.0  # uniform in +-rotation
    scale: tuple[float, float] = (0.45, 0.7)  # glyph side as a fraction of the canvas
    shear: float = 0.15
    shift: float = 0.15  # translation, fraction of the canvas half-width
    elastic: float = 0.08  # amplitude of the smooth displacement, in normalised coordinates
    contrast: tuple[float, float] = (0.4, 0.7)  # luminance gap between digit and background
    inverted: float = 0.0  # probability of a dark digit on a bright background
    texture: float = 0.1  # amplitude of the background's low-frequency colour noise
    distractors: int = 2  # smaller, fainter glyphs of random classes per image
    distractor_scale: tuple[float, float] = (0.3, 0.45)
    distractor_alpha: tuple[float, float] = (0.3, 0.6)
    occlusion: float = 0.3  # probability of an occluding rectangle
    noise: float = 0.05  # std of the per-pixel Gaussian noise, [0, 1] scale

    def key(self) -> str:
        text = json.dumps({"version": _VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


RECIPE = Digits32Recipe()

Split = tuple[torch.Tensor, torch.Tensor]


def _source_pools(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Glyphs (1797, 8, 8) in [0, 1], labels, and three disjoint stratified index pools (60/20/20)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    glyphs = torch.as_tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    pools: list[list[torch.Tensor]] = [[], [], []]
    for digit in range(10):
        idx = torch.nonzero(labels == digit).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut1, cut2 = int(0.6 * len(idx)), int(0.8 * len(idx))
        for pool, part in zip(pools, (idx[:cut1], idx[cut1:cut2], idx[cut2:])):
            pool.append(part)
    return glyphs, labels, [torch.cat(p).sort().values for p in pools]


def _uniform(gen: torch.Generator, n: int, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=gen)


def _smooth_field(gen: torch.Generator, n: int, channels: int, size: int = 32, grid: int = 4) -> torch.Tensor:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = torch.rand(n, channels, grid, grid, generator=gen) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _render(
    glyphs: torch.Tensor,
    gen: torch.Generator,
    scale: tuple[float, float],
    recipe: Digits32Recipe,
    elastic: float,
) -> torch.Tensor:
    """Warp 8x8 glyphs (n, 8, 8) onto a 32x32 canvas: coverage masks (n, 1, 32, 32) in [0, 1]."""
    n = len(glyphs)
    angle = _uniform(gen, n, -1, 1) * math.radians(recipe.rotation_deg)
    size = _uniform(gen, n, *scale)
    shear = _uniform(gen, n, -recipe.shear, recipe.shear)
    shift = _uniform(gen, n, -recipe.shift, recipe.shift, 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output coordinates -> glyph coordinates: inverse of scale, then shear, then rotation.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / size, (-sin + shear * cos) / size
    theta[:, 1, 0], theta[:, 1, 1] = sin / size, (cos + shear * sin) / size
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [n, 1, 32, 32], align_corners=False)
    if elastic > 0:
        grid = grid + elastic * _smooth_field(gen, n, 2).permute(0, 2, 3, 1)
    # Sharpen the blurry bilinear glyph a little, so strokes read as strokes.
    mask = F.grid_sample(glyphs.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return ((mask - 0.15) * 1.6).clamp(0, 1)


def _colours(gen: torch.Generator, n: int, recipe: Digits32Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Background and digit colours (n, 3) whose mean luminances differ by the recipe's contrast."""
    gap = _uniform(gen, n, *recipe.contrast)
    low = torch.rand(n, generator=gen) * (1 - gap)  # the darker of the two luminances
    inverted = torch.rand(n, generator=gen) < recipe.inverted
    lum_bg, lum_digit = torch.where(inverted, low + gap, low), torch.where(inverted, low, low + gap)
    tints = torch.rand(n, 2, 3, generator=gen) - 0.5  # luminance-neutral colour of each
    tints = 0.5 * (tints - tints.mean(dim=2, keepdim=True))
    background = (lum_bg[:, None] + tints[:, 0]).clamp(0, 1)
    digit = (lum_digit[:, None] + tints[:, 1]).clamp(0, 1)
    return background, digit


def _make_split(
    glyphs: torch.Tensor,
    labels: torch.Tensor,
    pool: torch.Tensor,
    count: int,
    gen: torch.Generator,
    recipe: Digits32Recipe,
) -> Split:
    """``count`` images drawn (class-balanced) from the glyphs of ``pool``."""
    picks = pool[torch.randint(len(pool), (count,), generator=gen)]
    y = labels[picks]
    background, digit = _colours(gen, count, recipe)
    image = background[:, :, None, None] + recipe.texture * _smooth_field(gen, count, 3, grid=6)
    for _ in range(recipe.distractors):
        other = pool[torch.randint(len(pool), (count,), generator=gen)]
        mask = _render(glyphs[other], gen, recipe.distractor_scale, recipe, elastic=0.0)
        alpha = _uniform(gen, count, *recipe.distractor_alpha)[:, None, None, None]
        colour = torch.rand(count, 3, 1, 1, generator=gen)
        image = image + alpha * mask * (colour - image)
    mask = _render(glyphs[picks], gen, recipe.scale, recipe, elastic=recipe.elastic)
    image = image + mask * (digit[:, :, None, None] - image)
    # One rectangle of random colour over part of the canvas (up to a third of each side).
    rows = torch.arange(32)[None, :]
    side = torch.randint(6, 12, (count, 2), generator=gen)
    corner = (torch.rand(count, 2, generator=gen) * (32 - side)).long()
    inside_y = (rows >= corner[:, :1]) & (rows < corner[:, :1] + side[:, :1])
    inside_x = (rows >= corner[:, 1:]) & (rows < corner[:, 1:] + side[:, 1:])
    occluded = (inside_y[:, :, None] & inside_x[:, None, :]) & (
        torch.rand(count, 1, 1, generator=gen) < recipe.occlusion
    )
    fill = torch.rand(count, 3, 1, 1, generator=gen)
    image = torch.where(occluded[:, None], fill, image)
    image = image + recipe.noise * torch.randn(image.shape, generator=gen)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(), y


def generate_digits32(recipe: Digits32Recipe = RECIPE) -> tuple[Split, Split, Split]:
    """(train, val, test) as (uint8 images (n, 3, 32, 32), int64 labels); deterministic in ``recipe``."""
    glyphs, labels, pools = _source_pools(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    counts = (recipe.train, recipe.val, recipe.test)
    return tuple(_make_split(glyphs, labels, pool, n, gen, recipe) for pool, n in zip(pools, counts))  # type: ignore[return-value]


def load_digits32(data_dir: str | Path, recipe: Digits32Recipe | None = None) -> tuple[Split, Split, Split]:
    """:func:`generate_digits32`, cached in ``<data_dir>/digits32/``.

    The cache is written to a temporary file and renamed, so a killed run or a concurrent
    worker never leaves a torn file; an unreadable cache is regenerated. ``recipe`` defaults
    to the module's ``RECIPE`` (read at call time, so a benchmark can swap it).
    """
    recipe = RECIPE if recipe is None else recipe
    folder = Path(data_dir).expanduser() / "digits32"
    path = folder / f"digits32-{recipe.key()}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return tuple((saved[f"{s}_x"], saved[f"{s}_y"]) for s in ("train", "val", "test"))  # type: ignore[return-value]
        except Exception:  # noqa: BLE001  (a corrupt cache is only a cache: make it again)
            pass
    splits = generate_digits32(recipe)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        payload = {f"{s}_{k}": t for s, split in zip(("train", "val", "test"), splits) for k, t in zip("xy", split)}
        atomic_torch_save(payload, path)
    except OSError:
        pass  # a read-only data directory only costs the regeneration next time
    return splits
