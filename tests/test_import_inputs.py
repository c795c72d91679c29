"""What the importers accept and how they read it: a DICOM window DICOM does not allow (ignored
with a note), list paths leaving their folder (refused unless allowed), float masks and label
maps (thresholded as documented, never rounded), and CSVs saved by Excel as "CSV UTF-8"."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from helpers import run_xgal
from import_files import scan, write_csv, write_dicom
from PIL import Image

from xgal.core.errors import InvalidArgument
from xgal.pool.importers.brats import import_brats
from xgal.pool.importers.common import read_mask
from xgal.pool.importers.dicom import import_dicom
from xgal.pool.importers.images import import_images
from xgal.pool.importers.volumes import import_volumes


def test_a_dicom_window_dicom_does_not_allow_is_ignored_with_a_note(tmp_path):
    src = tmp_path / "dcm"
    src.mkdir()
    write_dicom(src / "plain.dicom", scan())
    write_dicom(src / "zero.dicom", scan(), window=(2000, 0))
    write_dicom(src / "negative.dicom", scan(), window=(2000, -5))
    write_dicom(src / "big.dicom", np.zeros((64, 64), np.uint16))
    boxes = [[name, "Nodule", 8, 8, 24, 24] for name in ("plain", "zero", "negative", "big")]
    write_csv(src / "boxes.csv", ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], boxes)
    pool, report = import_dicom(src, src / "boxes.csv", tmp_path / "pool", size=16)
    assert pool.count == 4 and not report.skipped
    notes = sorted(report.notes)
    assert notes == [
        f"{src / name}: WindowWidth {w} (DICOM requires at least 1); scaled by its 0.5-99.5 "
        "percentiles as a file without a window"
        for name, w in (("negative.dicom", -5), ("zero.dicom", 0))
    ]
    images = dict(zip(pool.ids(), pool.read(0, 4, ("images",))["images"], strict=True))
    np.testing.assert_array_equal(images["zero"], images["plain"])  # as if it had no window
    np.testing.assert_array_equal(images["negative"], images["plain"])
    args = ("pool", "import", "dicom", src, tmp_path / "cli", "--boxes", src / "boxes.csv", "--size", 16)
    res = run_xgal(*args, "--max-pixels", 3500, "--allow-skips", timeout=120)
    assert res.returncode == 0, res.stderr
    said = res.stdout + res.stderr
    assert f"note: {src / 'zero.dicom'}: WindowWidth 0 (DICOM requires at least 1)" in said
    assert f"skipped {src / 'big.dicom'}: 64x64 = 4,096 pixels, above the limit of 3,500" in said


@pytest.fixture
def outside_world(tmp_path):
    """`src/` with two images, and `away/` beside it with one the lists reach out to."""
    src, away = tmp_path / "src", tmp_path / "away"
    src.mkdir()
    away.mkdir()
    for folder, name in ((src, "in.png"), (src, "in2.png"), (away, "out.png"), (away, "outmask.png")):
        Image.fromarray(np.full((20, 20), 255 if "mask" in name else 90, np.uint8)).save(folder / name)
    (src / "link.png").symlink_to(away / "out.png")
    (src / "sub").mkdir()
    (src / "sub" / "inside.png").symlink_to(src / "in2.png")  # a symlink that stays inside: fine
    return src, away


def test_list_paths_leaving_the_folder_are_refused_unless_allowed(outside_world, tmp_path):
    src, away = outside_world
    rows = [
        ["a", "in.png", ""],
        ["b", str(away / "out.png"), ""],
        ["c", "../away/out.png", ""],
        ["d", "link.png", ""],
        ["e", "sub/inside.png", "../away/outmask.png"],
    ]
    write_csv(src / "labels.csv", ["id", "image", "mask"], rows)
    with pytest.raises(InvalidArgument) as refused:
        import_images(src, src / "labels.csv", tmp_path / "p", size=16)
    message = str(refused.value)
    csv_name = src / "labels.csv"
    for where, cell in (
        ("line 3 image", str(away / "out.png")),
        ("line 4 image", "../away/out.png"),
        ("line 5 image", "link.png"),
    ):
        assert f"{csv_name} {where}: {cell!r} is outside {src} (it is {away / 'out.png'})" in message
    assert "and 1 more" in message and "--allow-outside-paths" in message and "\n" not in message
    write_csv(src / "mask.csv", ["image", "mask"], [["in.png", "../away/outmask.png"]])
    with pytest.raises(InvalidArgument, match=r"mask.csv line 2 mask: '../away/outmask.png' is outside"):
        import_images(src, src / "mask.csv", tmp_path / "m", size=16)
    pool, report = import_images(src, csv_name, tmp_path / "p", size=16, allow_outside_paths=True)
    assert pool.count == 5 and not report.skipped and pool.has_roi().tolist() == [0, 0, 0, 0, 1]
    res = run_xgal("pool", "import", "images", src, tmp_path / "cli", "--labels", csv_name, timeout=120)
    assert res.returncode == 2 and "line 3 image" in res.stderr and "--allow-outside-paths" in res.stderr
    res = run_xgal(
        "pool", "import", "images", src, tmp_path / "cli", "--labels", csv_name, "--allow-outside-paths"
    )
    assert res.returncode == 0, res.stderr


def test_volume_lists_and_dicom_ids_leaving_their_folder_are_refused_unless_allowed(tmp_path):
    study, away = tmp_path / "study", tmp_path / "away"
    study.mkdir()
    away.mkdir()
    vol = np.zeros((3, 8, 8), np.float32)
    vol[:, 2:6, 2:6] = 100
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(away / "v.nrrd"))
    seg = (vol > 0).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(seg), str(away / "s.nrrd"))
    (study / "s.nrrd").symlink_to(away / "s.nrrd")
    write_csv(study / "list.csv", ["patient", "image", "label"], [["p1", "../away/v.nrrd", "s.nrrd"]])
    with pytest.raises(InvalidArgument) as refused:
        import_volumes(study / "list.csv", tmp_path / "v", size=16)
    assert f"list.csv line 2 image: '../away/v.nrrd' is outside {study}" in str(refused.value)
    assert f"list.csv line 2 label: 's.nrrd' is outside {study} (it is {away / 's.nrrd'})" in str(
        refused.value
    )
    pool, _ = import_volumes(study / "list.csv", tmp_path / "v", size=16, allow_outside_paths=True)
    assert pool.count == 3 and pool.has_roi().all()
    dcm = tmp_path / "dcm"
    dcm.mkdir()
    write_dicom(away / "x.dicom", scan())
    write_csv(
        dcm / "boxes.csv",
        ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        [["../away/x", "Nodule", 8, 8, 24, 24]],
    )
    with pytest.raises(InvalidArgument, match=r"boxes.csv line 2 image_id: '../away/x.dicom' is outside"):
        import_dicom(dcm, dcm / "boxes.csv", tmp_path / "d", size=16)
    pool, _ = import_dicom(dcm, dcm / "boxes.csv", tmp_path / "d", size=16, allow_outside_paths=True)
    assert pool.count == 1


def test_float_masks_and_label_maps_are_thresholded_not_rounded(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(src / "scan.png")
    prob = np.zeros((32, 32), np.float32)
    prob[4:28, 4:28] = 0.4  # the uncertain rim: outside
    prob[8:24, 8:24] = 0.6  # the core: inside (F -> L conversion cut both to 0)
    Image.fromarray(prob, mode="F").save(src / "prob.tif")
    np.testing.assert_array_equal(read_mask(src / "prob.tif", 32, 32, "the scan"), prob > 0.5)
    write_csv(src / "labels.csv", ["image", "mask"], [["scan.png", "prob.tif"]])
    pool, _ = import_images(src, src / "labels.csv", tmp_path / "pool", size=32)
    assert pool.read(0, 1, ("rois",))["rois"][0].sum() == 16 * 16

    vol = np.zeros((3, 12, 12), np.float32)
    vol[:, 2:10, 2:10] = 100
    percent = np.zeros(vol.shape, np.float32)
    percent[:, 2:10, 2:10] = 30.5  # a probability map in percent: the rim is below half
    percent[1, 4:8, 4:8] = 80.5  # the lesion, on the middle slice only
    labels = np.zeros(vol.shape, np.float32)  # a label map stored as float: whole values
    labels[1, 4:8, 4:8] = 2.0
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "v.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(percent), str(tmp_path / "percent.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "labels.nii.gz"))
    rows = [["p1", "v.nii.gz", "percent.nii.gz"], ["p2", "v.nii.gz", "labels.nii.gz"]]
    write_csv(tmp_path / "list.csv", ["patient", "image", "label"], rows)
    pool, report = import_volumes(tmp_path / "list.csv", tmp_path / "lesion", size=12)
    assert not report.skipped and pool.labels().tolist() == [0, 1, 0] * 2
    assert pool.read(0, 6, ("rois",))["rois"].sum(axis=(1, 2)).tolist() == [0, 16, 0] * 2
    pool, report = import_volumes(
        tmp_path / "list.csv", tmp_path / "dominant", size=12, classes="dominant", names={2: "necrosis"}
    )
    assert pool.count == 1 and pool.labels().tolist() == [0]  # the float-stored labels' slice
    assert report.skipped == [
        f"{tmp_path / 'percent.nii.gz'}: a label map with fractional values (e.g. 30.5): a probability "
        "map has no label values; import it with classes 'lesion'"
    ]
    subject = tmp_path / "brats" / "S1"
    subject.mkdir(parents=True)
    for suffix in ("t1ce", "flair", "t2"):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.float32), np.eye(4)), subject / f"S1_{suffix}.nii.gz")
    seg = np.zeros((8, 8, 3), np.float32)
    seg[2:6, 2:6, 1] = 1.6  # a resampled segmentation: rounding made this 2 (edema)
    nib.save(nib.Nifti1Image(seg, np.eye(4)), subject / "S1_seg.nii.gz")
    pool, report = import_brats(tmp_path / "brats", tmp_path / "brats-pool", size=8, min_area=1)
    assert pool.count == 0 and report.skipped == [
        f"{subject / 'S1_seg.nii.gz'}: fractional values; a BraTS segmentation holds the labels 0, 1, 2, 4"
    ]


def test_csvs_saved_by_excel_as_csv_utf8_import(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 20), 90, np.uint8)).save(src / name)
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(src / "m.png")
    with open(src / "labels.csv", "w", newline="", encoding="utf-8-sig") as f:
        f.write("image,label,mask\r\na.png,benign,m.png\r\nb.png,malignant\r\n")  # b's mask cell: missing
    pool, report = import_images(src, src / "labels.csv", tmp_path / "pool", size=16)
    assert not report.skipped and pool.class_names == ["benign", "malignant"]
    assert pool.has_roi().tolist() == [1, 0]
    vol = np.zeros((2, 8, 8), np.float32)
    vol[:, 2:6, 2:6] = 100
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "v.mha"))
    write_csv(tmp_path / "list.csv", ["patient", "image"], [["p1", "v.mha"]], encoding="utf-8-sig")
    assert import_volumes(tmp_path / "list.csv", tmp_path / "v", size=8)[0].count == 2
    dcm = tmp_path / "dcm"
    dcm.mkdir()
    write_dicom(dcm / "a.dicom", scan())
    header = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    write_csv(dcm / "boxes.csv", header, [["a", "Nodule", 8, 8, 24, 24]], encoding="utf-8-sig")
    assert import_dicom(dcm, dcm / "boxes.csv", tmp_path / "d", size=16)[0].count == 1
    write_csv(src / "latin.csv", ["image", "label"], [["a.png", "bénin"]], encoding="latin-1")
    with pytest.raises(InvalidArgument, match=r"latin.csv: not UTF-8 text; save it as CSV UTF-8"):
        import_images(src, src / "latin.csv", tmp_path / "l", size=16)


@pytest.mark.parametrize(
    ("header", "named", "meant"),
    [(["image", "class"], "class", "label"), (["image", "lable"], "lable", "label"),
     (["file", "label"], "file", "image"), (["image", "label", "roi"], "roi", "mask"),
     (["image", "Label"], "Label", "label"), (["image", " label"], " label", "label")],
)  # fmt: skip
def test_a_misspelt_or_renamed_column_is_refused_by_name(tmp_path, header, named, meant):
    """Today `image,class` imports an unlabelled pool with exit 0: a column that looks like one
    xgal reads, while that one is missing, is refused naming both and the expected names."""
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp_path / "m.png")
    cells = {"image": "a.png", "file": "a.png", "roi": "m.png"}  # any other column: a class
    write_csv(tmp_path / "labels.csv", header, [[cells.get(h, "yes") for h in header]])
    with pytest.raises(InvalidArgument, match=f"column '{named}' looks like '{meant}', which is missing"):
        import_images(tmp_path, tmp_path / "labels.csv", tmp_path / "pool", size=8)
    write_csv(tmp_path / "extra.csv", ["image", "label", "notes", "reader"], [["a.png", "yes", "ok", "dr a"]])
    pool, _ = import_images(tmp_path, tmp_path / "extra.csv", tmp_path / "pool2", size=8)  # extras stay fine
    assert pool.count == 1 and pool.has_labels


def test_a_wrong_images_folder_is_one_error_not_a_skip_per_file(tmp_path):
    write_csv(tmp_path / "labels.csv", ["image", "label"], [[f"scan{i}.png", "yes"] for i in range(2400)])
    (tmp_path / "elsewhere").mkdir()
    res = run_xgal("pool", "import", "images", tmp_path / "elsewhere", tmp_path / "pool",
                   "--labels", tmp_path / "labels.csv", timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert "none of the 2400 images" in res.stderr and "is the images folder right?" in res.stderr
    assert "skipped" not in res.stdout + res.stderr


def test_a_detached_header_whose_data_file_leaves_the_folder_is_refused(tmp_path):
    """A MetaImage (.mhd) or NRRD (.nhdr) header names its data file, which SimpleITK reads
    wherever it is: that file must stay in the list's folder as the list's own paths must."""
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(256)) * 16)  # 4096 bytes: a 16x16x16 volume of uint8
    folder = tmp_path / "list"
    folder.mkdir()
    (folder / "vol.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 16\nElementType = MET_UCHAR\n"
        "ElementDataFile = ../secret.raw\n"
    )
    (folder / "vol.nhdr").write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 16\nencoding: raw\ndata file: ../secret.raw\n"
    )
    for name in ("vol.mhd", "vol.nhdr"):
        write_csv(folder / "list.csv", ["patient", "image"], [["p1", name]])
        with pytest.raises(InvalidArgument, match=r"\(its data file\): '\.\./secret.raw' is outside"):
            import_volumes(folder / "list.csv", tmp_path / f"pool-{name}", size=16)
    pool, _ = import_volumes(folder / "list.csv", tmp_path / "allowed", size=16, allow_outside_paths=True)
    assert pool.count == 16  # read, when the user says so
