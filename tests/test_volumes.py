"""3-D volumes imported as slices: NIfTI, NRRD and MHA written here with SimpleITK, each with a
tumour label map on known slices; the lesion slices, classes, ROIs and patients come out as
written, a volume stored in another orientation gives the same axial slices, and a pool split by
patient has no patient in both parts."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from xgal.core.errors import InvalidArgument
from xgal.pool.importers.volumes import import_volumes
from xgal.pool.split import shared_groups, split_by_group

# A volume (z, y, x) = (6, 20, 16): the lesion (label 1, necrosis core label 2 on slice 3) on
# axial slices 2, 3 and 4; the body a bright block.
LESION_SLICES = (2, 3, 4)


def _volumes(seed: int):
    rng = np.random.default_rng(seed)
    vol = np.zeros((6, 20, 16), np.float32)
    vol[:, 2:18, 2:14] = 100 + rng.random((6, 16, 12)) * 50
    seg = np.zeros(vol.shape, np.uint8)
    for z in LESION_SLICES:
        seg[z, 6:12, 5:9] = 1
        vol[z, 6:12, 5:9] = 300
    seg[3, 7:11, 5:9] = 2  # slice 3: necrosis dominates (16 voxels of 2 against 8 of 1)
    return vol, seg


def _save(array, path, flip=False):
    img = sitk.GetImageFromArray(array[:, ::-1] if flip else array)
    if flip:  # stored anterior-to-posterior reversed, which the direction matrix says
        img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
        img.SetOrigin((0, array.shape[1] - 1, 0))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def study(tmp_path):
    rows = []
    for i, ext in enumerate(("nii.gz", "nrrd", "mha")):
        vol, seg = _volumes(i)
        _save(vol, tmp_path / f"p{i}.{ext}", flip=(i == 2))
        _save(seg, tmp_path / f"p{i}-seg.{ext}", flip=(i == 2))
        rows.append([f"patient{i}", f"p{i}.{ext}", f"p{i}-seg.{ext}"])
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "image", "label"])
        w.writerows(rows)
    return tmp_path / "list.csv"


def test_every_format_gives_its_lesion_slices_classes_rois_and_patients(study, tmp_path):
    pool, report = import_volumes(study, tmp_path / "pool", size=32)
    assert not report.skipped and pool.count == 18  # 6 axial slices × 3 volumes, every slice kept
    d = pool.read(0, pool.count, ("ids", "images", "rois", "labels", "groups"))
    assert pool.class_names == ["no lesion", "lesion"]
    for i in range(3):  # NIfTI, NRRD, and MHA stored flipped: the same slices and ROIs
        rows = slice(6 * i, 6 * i + 6)
        assert d["ids"][rows].tolist() == [f"patient{i}_a{z:03d}" for z in range(6)]
        assert d["groups"][rows].tolist() == [f"patient{i}"] * 6
        assert [z for z in range(6) if d["labels"][6 * i + z]] == list(LESION_SLICES)
        np.testing.assert_array_equal(d["rois"][rows], d["rois"][0:6])
        # The ROI is where the lesion is: a 6x4 block of the 20x16 slice, padded to 20x20.
        assert d["rois"][6 * i + 2].sum() == pytest.approx(6 * 4 * (32 / 20) ** 2, rel=0.3)
    # Lesion slices only, classed by the dominant label value, named.
    pool, _ = import_volumes(
        study,
        tmp_path / "dominant",
        size=32,
        keep="lesion",
        classes="dominant",
        names={1: "tumour", 2: "necrosis"},
    )
    labels = pool.labels().tolist()
    assert pool.count == 9 and pool.class_names == ["tumour", "necrosis"] and labels[:3] == [0, 1, 0]


def test_a_patient_split_of_imported_volumes(study, tmp_path):
    pool, _ = import_volumes(study, tmp_path / "pool", size=16)
    train, test = split_by_group(pool, tmp_path / "train", tmp_path / "test", test_fraction=0.3, seed=0)
    assert shared_groups(train, test) == [] and (train.count, test.count) == (12, 6)


def test_anonymised_slices_name_no_patient_and_their_splits_share_the_key(study, tmp_path):
    """IDs a radiologist sees tell no patient; the patient stays each slice's group (splits
    read it); the key and the map back sit beside the pool and each split part."""
    from xgal.pool.id_map import IdMap, id_map_path

    pool, _ = import_volumes(study, tmp_path / "pool", size=16, anonymise=True)
    ids = pool.ids().tolist()
    assert all(i.startswith("scan-") and "patient" not in i for i in ids) and len(set(ids)) == 18
    sources = IdMap.read(id_map_path(pool.path)).sources
    assert sources[ids[0]] == {"id": "patient0_a000", "image": "p0.nii.gz"}
    train, test = split_by_group(pool, tmp_path / "train", tmp_path / "test", test_fraction=0.3, seed=0)
    for part in (train, test):
        part_map = IdMap.read(id_map_path(part.path))
        assert part_map.key == IdMap.read(id_map_path(pool.path)).key
        assert sorted(part_map.sources) == sorted(part.ids().tolist())


def test_bad_volume_lists_are_refused_or_skipped_by_name(study, tmp_path):
    with open(tmp_path / "half.csv", "w") as f:
        f.write("patient,image,label\npatient0,p0.nii.gz,p0-seg.nii.gz\npatient1,p1.nrrd,\n")
    with pytest.raises(InvalidArgument, match="every volume, or for none"):
        import_volumes(tmp_path / "half.csv", tmp_path / "x")
    with open(tmp_path / "missing.csv", "w") as f:
        f.write("patient,image\npatient0,p0.nii.gz\npatient9,nowhere.nrrd\n")
    pool, report = import_volumes(tmp_path / "missing.csv", tmp_path / "unlabelled", size=16)
    assert pool.count == 6 and not pool.has_labels and "nowhere.nrrd: file not found" in report.skipped[0]
    assert pool.has_roi().sum() == 0 and pool.groups()[0] == "patient0"
