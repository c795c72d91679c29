"""Importers on small files the tests write in each format: PNG with masks and boxes, DICOM
(MONOCHROME1/2, windowing) with a VinDr-style box CSV, NIfTI volumes in the BraTS layout;
validation and resuming an interrupted import."""

import csv

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import run_xgal
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xgal.core.errors import InvalidArgument
from xgal.pool.format import PARTIAL, Pool
from xgal.pool.importers.brats import import_brats
from xgal.pool.importers.dicom import import_dicom
from xgal.pool.importers.images import import_images


def _csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def png_folder(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    rows = []
    for i in range(6):
        img = np.full((40, 60), 30 + 20 * i, dtype=np.uint8)
        img[10:20, 15:45] = 250
        Image.fromarray(img).save(src / f"img{i}.png")
        mask = ""
        if i % 2 == 0:
            m = np.zeros((40, 60), dtype=np.uint8)
            m[10:20, 15:45] = 255
            Image.fromarray(m).save(src / f"mask{i}.png")
            mask = f"mask{i}.png"
        rows.append([f"img{i}.png", "benign" if i < 3 else "malignant", mask])
    _csv(src / "labels.csv", ["image", "label", "mask"], rows)
    _csv(
        src / "boxes.csv",
        ["image", "x_min", "y_min", "x_max", "y_max"],
        [["img1.png", 15, 10, 45, 20], ["img3.png", 0, 0, 30, 20], ["img3.png", 30, 20, 60, 40]],
    )
    return src


def test_png_with_masks_and_boxes(png_folder, tmp_path):
    pool, report = import_images(
        png_folder,
        png_folder / "labels.csv",
        tmp_path / "pool",
        size=32,
        boxes_csv=png_folder / "boxes.csv",
        fit="stretch",  # the fractions below are of the whole 60x40 image
    )
    assert report.written == 6 and not report.skipped
    d = pool.read(0, 6, ("ids", "images", "rois", "labels"))
    assert d["ids"].tolist() == [f"img{i}" for i in range(6)]
    assert d["images"].shape == (6, 1, 32, 32) and d["images"].dtype == np.uint8
    assert pool.class_names == ["benign", "malignant"] and d["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    # The lesion (rows 10-20 of 40, columns 15-45 of 60) is 1/8 of the image, masks and boxes alike.
    for i in (0, 1, 2, 4):
        assert abs(d["rois"][i].mean() - 0.125) < 0.03
    assert abs(d["rois"][3].mean() - 0.5) < 0.05  # two boxes filled into one mask
    assert d["rois"][5].sum() == 0  # no mask, no box: no ROI
    assert d["images"][0, 0, 8, 16] > 200 and d["images"][0, 0, 28, 2] < 60


def test_png_validation(png_folder, tmp_path):
    _csv(
        png_folder / "bad_boxes.csv",
        ["image", "x_min", "y_min", "x_max", "y_max"],
        [["img1.png", 50, 10, 90, 20]],
    )
    pool, report = import_images(
        png_folder,
        png_folder / "labels.csv",
        tmp_path / "p1",
        size=32,
        boxes_csv=png_folder / "bad_boxes.csv",
    )
    assert pool.count == 5 and "lies outside the 60x40 image" in report.skipped[0]
    _csv(png_folder / "dupes.csv", ["image", "label", "id"], [["img0.png", "a", "x"], ["img1.png", "a", "x"]])
    with pytest.raises(ValueError, match="duplicate IDs"):
        import_images(png_folder, png_folder / "dupes.csv", tmp_path / "p2")
    with pytest.raises(ValueError, match="not among the classes"):
        import_images(png_folder, png_folder / "labels.csv", tmp_path / "p3", class_names=["benign"])
    # A cell that is not a number is the user's to fix: it names the file and line (a user error).
    _csv(
        png_folder / "typo.csv",
        ["image", "x_min", "y_min", "x_max", "y_max"],
        [["img1.png", 1, 2, 3, 4], ["img1.png", 1, "2O", 3, 4]],
    )
    with pytest.raises(
        InvalidArgument, match=r"typo.csv line 3: box \['1', '2O', '3', '4'\] is not four numbers"
    ):
        import_images(
            png_folder, png_folder / "labels.csv", tmp_path / "p5", boxes_csv=png_folder / "typo.csv"
        )
    (png_folder / "img2.png").write_bytes(b"broken")
    _, report = import_images(png_folder, png_folder / "labels.csv", tmp_path / "p4", size=32)
    assert any("img2.png: not a readable image" in s for s in report.skipped)


def test_interrupted_import_resumes(png_folder, tmp_path):
    whole, _ = import_images(png_folder, png_folder / "labels.csv", tmp_path / "whole", size=32)

    def stop_after_four(done, total):
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        import_images(
            png_folder, png_folder / "labels.csv", out, size=32, shard_size=2, progress=stop_after_four
        )
    assert (out / PARTIAL).is_file() and not (out / "manifest.json").exists()
    seen = []
    pool, report = import_images(
        png_folder,
        png_folder / "labels.csv",
        out,
        size=32,
        shard_size=2,
        progress=lambda d, t: seen.append(d),
    )
    assert seen[0] == 5 and report.written == 2  # the four finished sources were not redone
    assert not (out / PARTIAL).exists()
    a, b = (
        whole.read(0, 6, ("ids", "images", "rois", "labels")),
        pool.read(0, 6, ("ids", "images", "rois", "labels")),
    )
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    pool.verify()


def _dicom(path, pixels, photometric="MONOCHROME2", window=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_vindr_style(tmp_path):
    src = tmp_path / "dcm"
    src.mkdir()
    base = np.full((64, 48), 500, dtype=np.uint16)
    base[8:24, 8:24] = 3500  # dense region
    _dicom(src / "a.dicom", base)
    _dicom(src / "b.dcm", base, photometric="MONOCHROME1")
    _dicom(src / "c.dicom", base, window=(2000, 4000))
    rows = [
        ["a", "Nodule/Mass", 8, 8, 24, 24],
        ["a", "Nodule/Mass", 10, 10, 20, 20],  # two readers, one finding
        ["b", "Lung Opacity", 0, 0, 10, 10],
        ["b", "Nodule/Mass", 8, 8, 40, 40],  # the larger class wins
        ["c", "Lung Opacity", 20, 30, 40, 60],
        ["d", "No finding", "", "", "", ""],
        ["e", "Pulmonary fibrosis", 1, 1, 5, 5],  # a class not asked for: image dropped
    ]
    _csv(src / "boxes.csv", ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], rows)
    pool, report = import_dicom(
        src, src / "boxes.csv", tmp_path / "pool", size=32, classes=["Nodule/Mass", "Lung Opacity"]
    )
    d = pool.read(0, pool.count, ("ids", "images", "rois", "labels"))
    assert d["ids"].tolist() == ["a", "b", "c"] and d["labels"].tolist() == [0, 0, 1]
    assert not report.skipped
    # MONOCHROME2: the dense region is bright; MONOCHROME1 stores it inverted, so it reads dark.
    assert d["images"][0, 0, 7, 7] > 200 and d["images"][0, 0, 25, 20] < 50
    assert d["images"][1, 0, 7, 7] < 50 and d["images"][1, 0, 25, 20] > 200
    assert d["rois"][0].sum() == pytest.approx(
        16 / 64 * 32 * 16 / 48 * 32, abs=10
    )  # the union: the 16x16 box
    assert d["rois"][2][20:30].any() and not d["rois"][2][:10].any()
    u16, _ = import_dicom(src, src / "boxes.csv", tmp_path / "p16", size=32, pixel_dtype="uint16")
    assert u16.pixel_dtype == "uint16" and u16.class_names == [
        "Lung Opacity",
        "Nodule/Mass",
        "Pulmonary fibrosis",
    ]
    assert pydicom.dcmread(src / "a.dicom").Rows == 64


def _nifti(path, arr, layout="ras"):
    """Save `arr` (indexed x, y, z in RAS+) as stored in another layout with the affine that says
    so: "ras" as is, "zyx" with the axes reversed, "lps" with x and y flipped."""
    affine = np.eye(4)
    if layout == "zyx":
        arr = arr.transpose(2, 1, 0)
        affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    elif layout == "lps":
        arr = arr[::-1, ::-1]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:2, 3] = [arr.shape[0] - 1, arr.shape[1] - 1]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr).astype(np.float32), affine), path)


def _brats_folder(src, layout="ras"):
    rng = np.random.default_rng(0)
    for s in ("BraTS20_001", "BraTS20_002"):
        sub = src / s
        sub.mkdir(parents=True)
        seg = np.zeros((24, 24, 5), dtype=np.int16)
        seg[4:14, 4:14, 1] = 2  # edema-dominated slice
        seg[6:8, 6:8, 1] = 4
        seg[4:10, 4:10, 2] = 1  # necrotic core only
        seg[4:14, 4:14, 3] = 4
        seg[5:7, 5:7, 3] = 2  # enhancing dominates
        seg[0:2, 0:2, 4] = 2  # too small: dropped
        _nifti(sub / f"{s}_seg.nii.gz", seg, layout)
        for m in ("t1ce", "flair", "t2"):
            vol = rng.random((24, 24, 5)) * 100 + 10
            _nifti(sub / f"{s}_{m}.nii.gz", vol, layout)
    return src


def test_brats_layout(tmp_path):
    src = _brats_folder(tmp_path / "brats")
    pool, report = import_brats(src, tmp_path / "pool", size=32, min_area=10)
    assert not report.skipped and pool.count == 6
    d = pool.read(0, 6, ("ids", "images", "rois", "labels"))
    assert d["ids"].tolist()[:3] == ["BraTS20_001_z001", "BraTS20_001_z002", "BraTS20_001_z003"]
    assert pool.class_names == ["edema", "necrotic", "enhancing"]
    assert d["labels"].tolist() == [0, 1, 2, 0, 1, 2]
    assert d["images"].shape == (6, 3, 32, 32)
    # The ROI is the dominant region's mask: 10x10 minus the enhancing 2x2 on slice 1.
    assert d["rois"][0].sum() == pytest.approx((100 - 4) * (32 / 24) ** 2, rel=0.15)
    (src / "BraTS20_003").mkdir()
    _, report = import_brats(src, tmp_path / "p2", size=32, min_area=10)
    assert "no BraTS20_003_seg.nii(.gz)" in report.skipped[0]


@pytest.mark.parametrize("layout", ["zyx", "lps"])
def test_brats_volumes_stored_in_another_orientation_give_the_same_axial_slices(tmp_path, layout):
    want, _ = import_brats(_brats_folder(tmp_path / "ras"), tmp_path / "p-ras", size=32, min_area=10)
    got, report = import_brats(_brats_folder(tmp_path / layout, layout), tmp_path / "p", size=32, min_area=10)
    assert not report.skipped and got.count == want.count == 6
    a, b = (p.read(0, 6, ("ids", "images", "rois", "labels")) for p in (want, got))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert "RAS+" in got.description


def test_import_cli(png_folder, tmp_path):
    args = ("pool", "import", "images", png_folder, tmp_path / "pool", "--labels", png_folder / "labels.csv")
    res = run_xgal(*args, "--size", 32, "--channels", 3, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "6 new samples" in res.stdout and Pool(tmp_path / "pool").image_shape == (3, 32, 32)
    again = run_xgal(*args, "--size", 32, "--channels", 3, timeout=120)
    assert again.returncode == 2 and "already a finished pool" in again.stderr


def _one_image_pool(folder, image, mask=None, **kwargs):
    """Import a folder of one image (and mask) at size 32; returns (pool, report)."""
    folder.mkdir()
    Image.fromarray(image).save(folder / "scan.png")
    row = ["scan.png", "a"]
    jpeg = kwargs.pop("jpeg", False)
    if mask is not None:
        mask.save(folder / ("mask.jpg" if jpeg else "mask.png"))
        row.append("mask.jpg" if jpeg else "mask.png")
    _csv(folder / "labels.csv", ["image", "label", "mask"][: len(row)], [row])
    return import_images(
        folder, folder / "labels.csv", folder.parent / (folder.name + "-pool"), size=32, **kwargs
    )


def test_a_16_bit_png_is_kept_or_windowed_never_clipped(tmp_path):
    # A CT slice stored as HU + 1024: air 24, soft tissue ~1064, bone 2024 (all above 255).
    ct = np.full((32, 32), 24, dtype=np.uint16)
    ct[8:24, 8:24] = 1064
    ct[12:16, 12:16] = 2024
    pool, report = _one_image_pool(tmp_path / "keep", ct, pixel_dtype="uint16")
    kept = pool.read(0, 1, ("images",))["images"][0, 0]
    assert pool.pixel_dtype == "uint16" and kept.dtype == np.uint16
    assert kept[2, 2] == 24 and kept[20, 20] == 1064 and kept[13, 13] == 2024  # the values as stored
    # An explicit soft-tissue window (centre 1064, width 400) into 8 bits: air black, bone white.
    pool, _ = _one_image_pool(tmp_path / "win", ct, window=(1064.0, 400.0))
    win = pool.read(0, 1, ("images",))["images"][0, 0]
    assert (win[2, 2], win[20, 20], win[13, 13]) == (0, 128, 255)
    # Neither: the image is refused by name, not clipped to 255 (which saturated 41% of a CT).
    pool, report = _one_image_pool(tmp_path / "clip", ct)
    assert pool.count == 0 and "16-bit image" in report.skipped[0] and "--uint16" in report.skipped[0]


def test_a_non_square_image_keeps_its_aspect(tmp_path):
    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[5:15, 15:25] = 255  # a 10x10 square lesion in the middle
    mask = Image.fromarray(wide.copy())
    for fit, rows, cols in (("pad", 8, 8), ("crop", 16, 16), ("stretch", 16, 8)):
        pool, report = _one_image_pool(tmp_path / fit, wide, mask, fit=fit)
        d = pool.read(0, 1, ("images", "rois"))
        lesion = np.argwhere(d["images"][0, 0] > 127)
        extent = lesion.max(0) - lesion.min(0) + 1
        assert tuple(extent) == (rows, cols), fit  # square stays square unless stretched
        np.testing.assert_array_equal(d["rois"][0], d["images"][0, 0] > 127)  # the ROI moved alike
        assert report.stretched == (1 if fit == "stretch" else 0)


def test_masks_are_thresholded_at_half_their_range(tmp_path):
    yy, xx = np.mgrid[:32, :32]
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 64).astype(np.uint8) * 255  # 208 pixels
    image = np.full((32, 32), 90, dtype=np.uint8)
    # A JPEG-compressed mask: its ringing around the edge (faint non-zero values, +10% of the
    # area here) must not count as ROI.
    pool, _ = _one_image_pool(tmp_path / "jpeg", image, Image.fromarray(disc), jpeg=True)
    assert pool.read(0, 1, ("rois",))["rois"][0].sum() == 208
    # A label map saved with values 0 and 1 (not 0 and 255) is still the region drawn.
    pool, _ = _one_image_pool(tmp_path / "ones", image, Image.fromarray((disc > 0).astype(np.uint8)))
    assert pool.read(0, 1, ("rois",))["rois"][0].sum() == 208
    # A label map of several regions (0, 1, 2, 4 as BraTS codes them): every region is the ROI.
    regions = (disc > 0).astype(np.uint8)
    regions[12:20, 12:20] = 2
    regions[14:16, 14:16] = 4
    pool, _ = _one_image_pool(tmp_path / "regions", image, Image.fromarray(regions))
    assert pool.read(0, 1, ("rois",))["rois"][0].sum() == 208


def test_the_import_command_fails_when_it_skips_or_writes_nothing(png_folder, tmp_path):
    (png_folder / "img2.png").write_bytes(b"broken")

    def run(out, *extra):
        options = ("--labels", png_folder / "labels.csv", "--size", 32)
        return run_xgal("pool", "import", "images", png_folder, out, *options, *extra, timeout=120)

    res = run(tmp_path / "p1")
    assert res.returncode == 2 and "1 sources were skipped" in res.stderr and "--allow-skips" in res.stderr
    assert "img2.png: not a readable image" in res.stdout + res.stderr  # each skip is listed
    assert run(tmp_path / "p2", "--allow-skips").returncode == 0
    _csv(png_folder / "none.csv", ["image", "label"], [["img2.png", "benign"]])
    options = ("--labels", png_folder / "none.csv", "--allow-skips")
    res = run_xgal("pool", "import", "images", png_folder, tmp_path / "p3", *options, timeout=120)
    assert res.returncode == 2 and "wrote no samples" in res.stderr


def test_an_unlabelled_archive_imports_and_a_half_labelled_one_is_refused(png_folder, tmp_path):
    _csv(png_folder / "nolabels.csv", ["image", "mask"], [[f"img{i}.png", ""] for i in range(4)])
    pool, report = import_images(png_folder, png_folder / "nolabels.csv", tmp_path / "u", size=32)
    assert pool.count == 4 and not pool.has_labels and not report.skipped
    named, _ = import_images(
        png_folder, png_folder / "nolabels.csv", tmp_path / "n", size=32, class_names=["benign", "malignant"]
    )
    assert not named.has_labels and named.class_names == ["benign", "malignant"]
    _csv(png_folder / "half.csv", ["image", "label"], [["img0.png", "benign"], ["img1.png", ""]])
    with pytest.raises(InvalidArgument, match="1 rows have no label"):
        import_images(png_folder, png_folder / "half.csv", tmp_path / "h", size=32)
