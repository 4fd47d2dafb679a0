"""The ``digits32`` task: deterministic, cached, split by source glyph, CIFAR-shaped, learnable."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import search.evaluation.digits32 as d32
from search.evaluation.data import DATASETS, load_dataset, num_classes_of

SMALL = dataclasses.replace(d32.RECIPE, train=300, val=300, test=100)


@pytest.fixture(scope="module")
def small():
    return d32.generate_digits32(SMALL)


def test_registered():
    assert "digits32" in DATASETS and num_classes_of("digits32") == 10


def test_shapes_dtypes_labels(small):
    for (images, labels), count in zip(small, (SMALL.train, SMALL.val, SMALL.test)):
        assert images.shape == (count, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.shape == (count,) and labels.dtype == torch.int64
        assert set(labels.tolist()) == set(range(10))  # every class in every split
        assert images.float().std() > 20  # not blank: colour, texture and digits vary


def test_deterministic(small):
    again = d32.generate_digits32(SMALL)
    for (x1, y1), (x2, y2) in zip(small, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = d32.generate_digits32(dataclasses.replace(SMALL, seed=1))
    assert not torch.equal(small[0][0], other[0][0])


def test_splits_use_disjoint_source_glyphs():
    glyphs, labels, pools = d32._source_pools(0)
    sets = [set(p.tolist()) for p in pools]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert len(sets[0] | sets[1] | sets[2]) == len(labels) == 1797
    for pool in pools:  # stratified: every class in every pool
        assert set(labels[pool].tolist()) == set(range(10))


def test_cache_hit_equals_fresh(tmp_path, small):
    first = d32.load_digits32(tmp_path, SMALL)
    files = list((tmp_path / "digits32").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary file left behind
    cached = d32.load_digits32(tmp_path, SMALL)
    for (x1, y1), (x2, y2), (x3, y3) in zip(first, cached, small):
        assert torch.equal(x1, x2) and torch.equal(x1, x3) and torch.equal(y1, y2) and torch.equal(y1, y3)
    files[0].write_bytes(b"torn")  # a corrupt cache is regenerated, not an error
    assert torch.equal(d32.load_digits32(tmp_path, SMALL)[0][0], small[0][0])


def test_load_dataset_fixed_split(tmp_path, monkeypatch, small):
    monkeypatch.setattr(d32, "RECIPE", SMALL)
    data = load_dataset("digits32", tmp_path)
    assert torch.equal(data.train_images, small[0][0]) and torch.equal(data.val_labels, small[1][1])
    assert torch.equal(data.test_images, small[2][0]) and not data.hflip and data.num_classes == 10
    full = load_dataset("digits32", tmp_path, full_train=True)
    assert len(full.train_labels) == SMALL.train + SMALL.val and len(full.val_labels) == 0
    resplit = load_dataset("digits32", tmp_path, val_size=50, split_seed=3)
    assert len(resplit.val_labels) == 50 and len(resplit.train_labels) == SMALL.train + SMALL.val - 50


def test_learns_beyond_chance_quickly(small):
    """A tiny CNN, a few seconds of training: well above the 10 % of chance on held-out glyphs."""
    torch.manual_seed(0)
    (train_x, train_y), (val_x, val_y), _ = d32.generate_digits32(dataclasses.replace(SMALL, train=800))
    mean = train_x.float().mean((0, 2, 3), keepdim=True)
    std = train_x.float().std((0, 2, 3), keepdim=True)
    norm = lambda x: (x.float() - mean) / std  # noqa: E731
    model = nn.Sequential(  # at 16x16: a few million multiply-adds per image
        nn.AvgPool2d(2),
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        for idx in torch.randperm(len(train_y)).split(64):
            loss = nn.functional.cross_entropy(model(norm(train_x[idx])), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(norm(val_x)).argmax(1) == val_y).float().mean().item()
    # chance is 0.10 +- 0.02 on 300 validation images: 0.25 is far beyond it
    assert accuracy > 0.25, accuracy
