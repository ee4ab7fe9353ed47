"""Shared pytest fixtures: the synthetic toy dataset (p5x.toydata), written once per session."""

from __future__ import annotations

import pytest

from p5x.schema import load_dataset
from p5x.toydata import make_toy_dataset


@pytest.fixture(autouse=True)
def _item_init_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty --item-init cache of its own (p5x.iteminit.cache_dir), never ~/.cache."""
    monkeypatch.setenv("P5X_CACHE_DIR", str(tmp_path_factory.mktemp("p5x_cache")))


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory):
    """A directory holding the default toy dataset (40 users, 60 items, seed 0)."""
    d = tmp_path_factory.mktemp("toy") / "toy"
    make_toy_dataset(d)
    return d


@pytest.fixture(scope="session")
def toy_ds(toy_dir):
    """The toy dataset as loaded from disk (p5x.schema.Dataset); treat it as read-only."""
    return load_dataset(toy_dir)
