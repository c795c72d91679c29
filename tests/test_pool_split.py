"""Pools that carry a group (patient) per sample, and splits that never cut a patient in two:
the format keeps and checks the groups, `xgal pool split --by patient` writes two pools with no
patient in both, and `xgal train` refuses a test pool that shares patients with its pool."""

import numpy as np
import pytest
from helpers import blob_images, labelled_pool, run_xgal

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool, PoolFormatError
from xgal.pool.split import shared_groups, split_by_group, split_by_sample
from xgal.pool.writer import PoolWriter


def _patients_pool(path, patients=30, seed=0) -> Pool:
    """Patients with 1 to 8 slices each, labelled, in shards of 40."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, patients)
    groups = np.repeat([f"p{i:02d}" for i in range(patients)], counts)
    n = len(groups)
    with PoolWriter(
        path,
        image_shape=(1, 16, 16),
        class_names=["a", "b"],
        with_labels=True,
        with_groups=True,
        shard_size=40,
    ) as w:
        w.add(
            [f"s{i:04d}" for i in range(n)],
            blob_images(n, 1, 16, seed=seed),
            np.zeros((n, 16, 16), np.uint8),
            rng.integers(0, 2, n),
            groups=groups,
        )
    return Pool(path)


def test_groups_are_stored_checked_and_read_back(tmp_path):
    pool = _patients_pool(tmp_path / "p")
    assert pool.has_groups and pool.groups()[0] == "p00" and len(pool.groups()) == pool.count
    pool.verify()
    # The groups file is under the manifest's checksums like every other array.
    file = pool.path / "shard-00000" / "groups.npy"
    arr = np.load(file)
    arr[0] = "p99"
    np.save(file, arr)
    with pytest.raises(PoolFormatError, match="groups.npy"):
        Pool(pool.path).verify()
    plain = PoolWriter(tmp_path / "plain", image_shape=(1, 16, 16))
    plain.add(["x"], np.zeros((1, 1, 16, 16), np.uint8), np.zeros((1, 16, 16), np.uint8))
    plain.close()
    with pytest.raises(PoolFormatError, match="no group"):
        Pool(tmp_path / "plain").groups()
    with pytest.raises(PoolFormatError, match="groups must be given"):
        PoolWriter(tmp_path / "g", image_shape=(1, 16, 16), with_groups=True).add(
            ["x"], np.zeros((1, 1, 16, 16), np.uint8), np.zeros((1, 16, 16), np.uint8)
        )


def test_a_split_by_patient_puts_no_patient_in_both(tmp_path):
    pool = _patients_pool(tmp_path / "p")
    train, test = split_by_group(pool, tmp_path / "train", tmp_path / "test", test_fraction=0.25, seed=3)
    assert not set(train.groups().tolist()) & set(test.groups().tolist())
    assert shared_groups(train, test) == [] and shared_groups(pool, test) != []
    assert train.count + test.count == pool.count and test.count >= 0.25 * pool.count
    assert test.count < 0.25 * pool.count + 8  # no more than one patient past the fraction
    every = dict(
        zip(
            pool.ids().tolist(), zip(pool.labels().tolist(), pool.groups().tolist(), strict=True), strict=True
        )
    )
    for part in (train, test):
        got = zip(
            part.ids().tolist(), zip(part.labels().tolist(), part.groups().tolist(), strict=True), strict=True
        )
        assert all(every[i] == v for i, v in got)  # labels and patients travel with their scans
    again, _ = split_by_group(pool, tmp_path / "t2", tmp_path / "s2", test_fraction=0.25, seed=3)
    other, _ = split_by_group(pool, tmp_path / "t3", tmp_path / "s3", test_fraction=0.25, seed=4)
    assert again.ids().tolist() == train.ids().tolist() != other.ids().tolist()
    plain = Pool(_plain(tmp_path / "plain"))
    with pytest.raises(InvalidArgument, match="no patient per sample"):
        split_by_group(plain, tmp_path / "a", tmp_path / "b")


def _plain(path):
    with PoolWriter(path, image_shape=(1, 16, 16)) as w:
        w.add(["x", "y"], np.zeros((2, 1, 16, 16), np.uint8), np.zeros((2, 16, 16), np.uint8))
    return path


def test_the_cli_splits_and_train_refuses_shared_patients(tmp_path):
    pool = _patients_pool(tmp_path / "p")

    def xgal(*args):
        return run_xgal(*args, timeout=300)

    res = xgal("pool", "split", pool.path, "--by", "patient", "--test-fraction", 0.3, "--seed", 1,
               "--out-train", tmp_path / "train", "--out-test", tmp_path / "test")  # fmt: skip
    assert res.returncode == 0 and "patients" in res.stdout, res.stderr
    assert shared_groups(Pool(tmp_path / "train"), Pool(tmp_path / "test")) == []
    for part in ("train", "test"):  # which patients went where, by name
        names = sorted(set(Pool(tmp_path / part).groups().tolist()))
        assert f"of {len(names)} patients: {', '.join(names)}" in res.stdout
    assert "patients: 30" in xgal("pool", "info", pool.path).stdout
    res = xgal("train", "--pool", tmp_path / "train", "--test-pool", pool.path, "--out", tmp_path / "run")
    assert res.returncode == 2 and "patients are in both the pool and the test pool" in res.stderr
    assert "--allow-shared-patients" in res.stderr


def test_a_pool_without_patients_splits_by_sample_stratified_by_class(tmp_path):
    """One scan per patient (no groups): a seeded random split that keeps each class's share."""
    labels = np.array([0] * 80 + [1] * 20)
    pool = labelled_pool(tmp_path / "p", labels, ["no", "yes"])
    train, test = split_by_sample(pool, tmp_path / "train", tmp_path / "test", test_fraction=0.25, seed=2)
    assert np.bincount(test.labels()).tolist() == [20, 5] and np.bincount(train.labels()).tolist() == [60, 15]
    assert not set(train.ids().tolist()) & set(test.ids().tolist())
    again, _ = split_by_sample(pool, tmp_path / "t2", tmp_path / "s2", test_fraction=0.25, seed=2)
    assert again.ids().tolist() == train.ids().tolist()  # a seed reproduces it
    with pytest.raises(InvalidArgument, match="--by sample"):
        split_by_group(pool, tmp_path / "a", tmp_path / "b")
    res = run_xgal("pool", "split", pool.path, "--by", "sample", "--test-fraction", 0.25,
                   "--out-train", tmp_path / "c", "--out-test", tmp_path / "d", timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (
        "wrote" in res.stdout
        and "75 samples (60 no, 15 yes)" in res.stdout
        and "25 samples (20 no, 5 yes)" in res.stdout
    )
