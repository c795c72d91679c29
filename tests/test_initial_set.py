"""The initial set: exactly the size asked for, drawn at random without reading the pool's
labels unless the user asks for the authors' stratified start (`--initial-balance oracle`)."""

import numpy as np
import pytest
from helpers import labelled_pool

from xgal.core.errors import InvalidArgument
from xgal.loop import LoopConfig
from xgal.loop.labelled import initial_selection
from xgal.pool.format import Pool
from xgal.pool.writer import PoolWriter


def test_the_initial_set_is_exactly_the_size_asked_for(tmp_path):
    # Stratified by the pool's labels (the authors' start, asked for explicitly): 3 classes, one of
    # them small: its share of 30 is 10, it has 4; the rest come from the others.
    labels = np.array([0] * 50 + [1] * 50 + [2] * 4)
    n = len(labels)
    pool = labelled_pool(tmp_path / "p", labels, ["a", "b", "c"])
    for seed in range(3):
        chosen = initial_selection(pool, 30, seed, "oracle")
        assert len(chosen) == len(set(chosen)) == 30
        picked = labels[[int(c[1:]) for c in chosen]]
        assert (picked == 2).sum() == 4 and abs((picked == 0).sum() - (picked == 1).sum()) <= 1
    with pytest.raises(InvalidArgument, match="larger than the pool"):
        initial_selection(pool, n + 1, 0)


def test_the_default_initial_set_reads_no_label(tmp_path, monkeypatch):
    """A labelled pool's initial set is drawn without its labels unless the user asks for the
    authors' stratified start; that start needs labels and says so on a real archive."""
    labels = np.array([1] * 14 + [0] * 86)  # a rare class, as lesions are
    pool = labelled_pool(tmp_path / "p", labels, ["a", "b"])
    oracle = initial_selection(pool, 10, 0, "oracle")
    assert sum(labels[int(c[1:])] for c in oracle) == 5  # half the set from a 14% class

    read = Pool.read

    def no_labels(self, start, stop, keys=("ids", "images", "rois")):
        assert "labels" not in keys, "the initial set read the pool's labels"
        return read(self, start, stop, keys)

    monkeypatch.setattr(Pool, "read", no_labels)
    chosen = initial_selection(pool, 10, 0)
    assert len(set(chosen)) == 10 and chosen != oracle
    assert LoopConfig().initial_balance == "none"
    with PoolWriter(tmp_path / "archive", image_shape=(1, 8, 8), class_names=["a", "b"]) as w:
        w.add(["x", "y"], np.zeros((2, 1, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8), None)
    with pytest.raises(InvalidArgument, match="reads the pool's true labels"):
        initial_selection(Pool(tmp_path / "archive"), 1, 0, "oracle")
