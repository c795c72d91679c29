"""The pool format: shards, memory maps, manifest checks, checksums, the synthetic generator."""

import json

import numpy as np
import pytest

from xgal.pool.format import Pool, PoolFormatError, PoolWriter
from xgal.pool.synth import synth_pool


def _write(path, n=25, shard_size=10, labels=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    rois = (rng.random((n, 8, 8)) > 0.5).astype(np.uint8)
    ids = [f"id{i:03d}" for i in range(n)]
    lab = np.arange(n) % 2 if labels else None
    with PoolWriter(
        path, image_shape=(1, 8, 8), class_names=["x", "y"], with_labels=labels, shard_size=shard_size
    ) as w:
        for lo in range(0, n, 7):  # batches that straddle shard borders
            w.add(
                ids[lo : lo + 7],
                images[lo : lo + 7],
                rois[lo : lo + 7],
                None if lab is None else lab[lo : lo + 7],
            )
    return images, rois, ids


def test_roundtrip_across_shards(tmp_path):
    images, rois, ids = _write(tmp_path / "p")
    pool = Pool(tmp_path / "p")
    assert len(pool) == 25 and len(pool.shards) == 3
    got = pool.read(8, 23, ("ids", "images", "rois", "labels"))
    np.testing.assert_array_equal(got["images"], images[8:23])
    np.testing.assert_array_equal(got["rois"], rois[8:23])
    assert got["ids"].tolist() == ids[8:23]
    np.testing.assert_array_equal(got["labels"], np.arange(8, 23) % 2)
    pool.verify()


def test_checksum_detects_corruption(tmp_path):
    _write(tmp_path / "p")
    f = tmp_path / "p" / "shard-00001" / "images.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(PoolFormatError, match="checksum mismatch"):
        Pool(tmp_path / "p").verify()


def test_mismatched_shapes_are_named(tmp_path):
    _write(tmp_path / "p")
    np.save(tmp_path / "p" / "shard-00000" / "rois.npy", np.zeros((10, 4, 4), dtype=np.uint8))
    with pytest.raises(PoolFormatError, match=r"rois.npy: uint8\[10, 4, 4\] does not match"):
        Pool(tmp_path / "p").check()


def test_writer_rejects_bad_batches(tmp_path):
    w = PoolWriter(tmp_path / "p", image_shape=(1, 8, 8))
    img = np.zeros((2, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(PoolFormatError, match="images are uint8"):
        w.add(["a", "b"], np.zeros((2, 1, 4, 4), dtype=np.uint8), np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(PoolFormatError, match="rois have shape"):
        w.add(["a", "b"], img, np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(PoolFormatError, match="0/1 masks"):
        w.add(["a", "b"], img, np.full((2, 8, 8), 255, np.uint8))
    w.add(["a", "b"], img, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(PoolFormatError, match="unique"):
        w.add(["b", "c"], img, np.zeros((2, 8, 8), np.uint8))


def test_not_a_pool(tmp_path):
    with pytest.raises(PoolFormatError, match="no manifest.json"):
        Pool(tmp_path)
    _write(tmp_path / "p")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    m["count"] = 99
    (tmp_path / "p" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PoolFormatError, match="shards hold 25 samples, manifest says 99"):
        Pool(tmp_path / "p")


def test_existing_pool_is_not_overwritten(tmp_path):
    _write(tmp_path / "p")
    with pytest.raises(FileExistsError):
        PoolWriter(tmp_path / "p", image_shape=(1, 8, 8))


def test_synth_is_reproducible_and_labelled(tmp_path):
    a = synth_pool(tmp_path / "a", 40, seed=3, image_size=32, shard_size=16)
    b = synth_pool(tmp_path / "b", 40, seed=3, image_size=32)
    da = a.read(0, 40, ("ids", "images", "rois", "labels"))
    db = b.read(0, 40, ("ids", "images", "rois", "labels"))
    for k in da:
        np.testing.assert_array_equal(da[k], db[k])
    assert a.class_names == ["round", "striated", "spiculated"]
    assert np.bincount(da["labels"]).tolist() == [14, 13, 13]
    assert (da["rois"].reshape(40, -1).sum(1) > 10).all()  # every scan has its lesion ROI
    test = synth_pool(tmp_path / "t", 40, seed=3, image_size=32, split="test")
    assert test.ids()[0] == "test-0000000"


def test_synth_channels_repeat_the_scan(tmp_path):
    gray = synth_pool(tmp_path / "g", 6, seed=1, image_size=32).read(0, 6)
    rgb = synth_pool(tmp_path / "c", 6, seed=1, image_size=32, channels=3).read(0, 6)
    assert rgb["images"].shape == (6, 3, 32, 32)
    for c in range(3):
        np.testing.assert_array_equal(rgb["images"][:, c], gray["images"][:, 0])
    np.testing.assert_array_equal(rgb["rois"], gray["rois"])
    with pytest.raises(ValueError, match="channels"):
        synth_pool(tmp_path / "x", 6, channels=0)


def test_marker_is_drawn_as_asked(tmp_path):
    # With every scan tagged, the saturated glyph makes pixel 255 common outside the ROI;
    # with none tagged it is rare.
    tagged = synth_pool(tmp_path / "a", 30, seed=0, image_size=32, marker_fraction=1.0).read(0, 30)
    plain = synth_pool(tmp_path / "b", 30, seed=0, image_size=32, marker_fraction=0.0).read(0, 30)
    sat = lambda d: ((d["images"][:, 0] == 255) & (d["rois"] == 0)).sum()  # noqa: E731
    assert sat(tagged) > 30 * 5 and sat(plain) < 30


def test_take_keeps_ids_longer_than_the_first_shards(tmp_path):
    # Each shard stores its IDs at its own string width; a later shard's longer IDs must not be
    # cut to the width of the first shard touched.
    ids = [f"s{i}" for i in range(10)] + [f"a-much-longer-id-{i:04d}" for i in range(10)]
    rng = np.random.default_rng(1)
    with PoolWriter(tmp_path / "p", image_shape=(1, 4, 4), shard_size=10) as w:
        for lo in (0, 10):  # one batch per shard, so each is written at its own width
            images = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
            w.add(ids[lo : lo + 10], images, np.zeros((10, 4, 4), np.uint8))
    pool = Pool(tmp_path / "p")
    got = pool.take([3, 15, 0, 19])
    assert got["ids"].tolist() == [ids[3], ids[15], ids[0], ids[19]]
    np.testing.assert_array_equal(got["images"], pool.read(0, 20)["images"][[3, 15, 0, 19]])


def test_roi_count_comes_from_the_manifest_and_falls_back_to_the_masks(tmp_path):
    """The writer counts each shard's samples with an ROI, so `pool info` reads no mask; a pool
    written before that (no counts in its manifest) is counted from its masks."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (25, 1, 8, 8), dtype=np.uint8)
    rois = np.ones((25, 8, 8), dtype=np.uint8)
    rois[[0, 3, 11, 12, 24]] = 0  # blank ROIs in every shard, the last (partial) one included
    blank = _write_these(tmp_path / "q", images, rois)
    pool = Pool(tmp_path / "q")
    assert [s.with_roi for s in pool.shards] == [8, 8, 4]
    assert pool.roi_count() == 25 - len(blank) == int(pool.has_roi().sum())
    for shard in pool.shards:  # the counts alone answer: no mask is read
        (shard.path / "rois.npy").unlink()
    assert Pool(tmp_path / "q").roi_count() == 20

    _write_these(tmp_path / "old", images, rois)
    manifest = tmp_path / "old" / "manifest.json"
    m = json.loads(manifest.read_text())
    for shard in m["shards"]:
        del shard["with_roi"]
    manifest.write_text(json.dumps(m))
    old = Pool(tmp_path / "old")
    assert old.shards[0].with_roi is None and old.roi_count() == 20
    # A manifest with some counts (a writer resumed from before them): only the shards without
    # one are counted from their masks.
    m["shards"][0]["with_roi"], m["shards"][2]["with_roi"] = 8, 4
    manifest.write_text(json.dumps(m))
    for shard in ("shard-00000", "shard-00002"):
        (tmp_path / "old" / shard / "rois.npy").unlink()
    assert Pool(tmp_path / "old").roi_count() == 20


def _write_these(path, images, rois):
    """A pool of these images and ROIs in shards of 10; returns the rows without an ROI."""
    with PoolWriter(path, image_shape=(1, 8, 8), class_names=[], with_labels=False, shard_size=10) as w:
        w.add([f"id{i:03d}" for i in range(len(images))], images, rois)
    return [i for i in range(len(rois)) if not rois[i].any()]
