"""Shared pytest fixtures: the synthetic toy dataset (p5x.toydata), written once per session."""

from __future__ import annotations

import pytest

from p5x.schema import load_dataset
from p5x.toydata import make_toy_dataset


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
