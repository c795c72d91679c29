"""Decompression bombs (a PNG, a mask as answers read it, an ICO posing as a PNG whose frame is
bigger than its header, DICOM, NIfTI) skipped by name before a pixel is decoded, each read in a
process capped at 2 GiB of address space and 60 s; the pixel limit from the argument, the
environment and the CLI, and PIL's own guard set to it while xgal decodes."""

import io

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import run_xgal
from import_files import capped, ico_holding, nifti_declaring, png_bomb, scan, write_csv, write_dicom
from PIL import Image

from xgal.core.errors import InvalidArgument
from xgal.pool.importers.common import read_mask
from xgal.pool.importers.images import import_images
from xgal.pool.importers.safety import DEFAULT_MAX_PIXELS, DEFAULT_MAX_VOXELS, ENV_MAX_PIXELS, ENV_MAX_VOXELS


def test_png_bombs_are_skipped_by_name_before_a_pixel_is_decoded(tmp_path):
    src = tmp_path / "png"
    src.mkdir()
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(src / "ok.png")
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(src / "ok2.png")
    # 13,000²: under PIL's own error threshold, decoded today (3.5 GB); 20,000²: a traceback today.
    (src / "bomb13k.png").write_bytes(png_bomb(13_000, 13_000))
    (src / "bomb20k.png").write_bytes(png_bomb(20_000, 20_000))
    (src / "bombmask.png").write_bytes(png_bomb(13_000, 13_000))
    # An ICO named .png whose directory says 16x16 and whose frame is the 13,000² PNG.
    (src / "trick.png").write_bytes(ico_holding(png_bomb(13_000, 13_000)))
    assert max(p.stat().st_size for p in src.iterdir()) < 100_000
    rows = [["ok.png", ""], ["bomb13k.png", ""], ["bomb20k.png", ""], ["ok2.png", "bombmask.png"]]
    write_csv(src / "labels.csv", ["image", "mask"], rows)
    got = capped(
        """
        from pathlib import Path
        from xgal.core.errors import InvalidArgument
        from xgal.pool.importers.common import read_mask
        from xgal.pool.importers.images import import_images

        src = Path(sys.argv[1])
        pool, report = import_images(src, src / "labels.csv", src.parent / "pool", size=16)
        result.update(written=report.written, skipped=report.skipped)
        for name, h, w in (("bomb13k.png", 13_000, 13_000), ("trick.png", 16, 16)):  # as answers read
            try:
                read_mask(src / name, h, w, "each scan")
            except InvalidArgument as exc:
                result[name] = str(exc)
        """,
        src,
    )
    limit = f"above the limit of {DEFAULT_MAX_PIXELS:,} ({ENV_MAX_PIXELS}, or --max-pixels at import)"
    assert got["written"] == 1 and len(got["skipped"]) == 3
    assert got["skipped"][0] == f"{src / 'bomb13k.png'}: 169,000,000 pixels, {limit}"
    assert got["skipped"][1].startswith(f"{src / 'bomb20k.png'}: ") and limit in got["skipped"][1]
    assert got["skipped"][2].startswith(f"{src / 'bombmask.png'}: ") and limit in got["skipped"][2]
    assert got["bomb13k.png"] == f"{src / 'bomb13k.png'}: 169,000,000 pixels, {limit}"
    # An ICO is no kind a scan or mask comes in: PIL is not let open it at all.
    assert got["trick.png"] == f"{src / 'trick.png'}: not a readable mask (not a PNG, JPEG, TIFF, BMP file)"
    assert all("\n" not in line for line in got["skipped"])
    assert got["rss_mb"] < 300, got  # about 205 MB; decoding any of these bombs adds 169 MB or more


def test_dicom_bombs_are_skipped_by_name_before_the_pixel_data_is_decoded(tmp_path):
    src = tmp_path / "dcm"
    src.mkdir()
    write_dicom(src / "ok.dicom", scan())
    write_dicom(src / "huge.dicom", rows=20_000, columns=20_000, rle=True)
    write_dicom(src / "frames.dicom", rows=2_000, columns=2_000, frames=40, rle=True)
    boxes = [[name, "Nodule", 8, 8, 24, 24] for name in ("ok", "huge", "frames")]
    write_csv(src / "boxes.csv", ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"], boxes)
    got = capped(
        """
        from pathlib import Path
        from xgal.pool.importers.dicom import import_dicom

        src = Path(sys.argv[1])
        pool, report = import_dicom(src, src / "boxes.csv", src.parent / "pool", size=16)
        result.update(written=report.written, skipped=report.skipped)
        """,
        src,
    )
    limit = f"above the limit of {DEFAULT_MAX_PIXELS:,}"
    assert got["written"] == 1
    assert got["skipped"][0].startswith(f"{src / 'frames.dicom'}: 2000x2000x40 = 160,000,000 pixels, {limit}")
    assert got["skipped"][1].startswith(f"{src / 'huge.dicom'}: 20000x20000 = 400,000,000 pixels, {limit}")
    assert got["rss_mb"] < 300, got


def test_a_deflated_dicom_is_inflated_within_the_limit_before_pydicom_reads_it(tmp_path):
    """A deflated dataset is inflated whole by pydicom, before any header can be checked: xgal
    inflates it first, bounded, and refuses it by name past 8 bytes a pixel of the limit."""
    src = tmp_path / "dcm"
    src.mkdir()
    write_dicom(src / "ok.dicom", scan(), deflated=True)
    write_dicom(src / "zip.dicom", np.zeros((3000, 3000), np.uint16), deflated=True)  # 18 MB of zeros
    assert (src / "zip.dicom").stat().st_size < 100_000
    write_csv(src / "boxes.csv", ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
              [[n, "Nodule", 8, 8, 24, 24] for n in ("ok", "zip")])  # fmt: skip
    from xgal.pool.importers.dicom import import_dicom

    pool, report = import_dicom(src, src / "boxes.csv", tmp_path / "pool", size=16, max_pixels=100_000)
    assert pool.count == 1 and report.skipped == [
        f"{src / 'zip.dicom'}: a deflated DICOM inflating past 17,577,216 bytes, beyond the pixel limit "
        f"of 100,000 ({ENV_MAX_PIXELS}, or --max-pixels at import)"
    ]


def test_volume_bombs_are_skipped_by_name_from_their_header(tmp_path):
    vol = np.zeros((4, 8, 8), np.float32)
    vol[:, 2:6, 2:6] = 100
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "ok.nii.gz"))
    nifti_declaring(tmp_path / "huge.nii", (1000, 1000, 1000))
    write_csv(tmp_path / "list.csv", ["patient", "image"], [["p1", "ok.nii.gz"], ["p2", "huge.nii"]])
    subject = tmp_path / "brats" / "S1"
    subject.mkdir(parents=True)
    for suffix in ("seg", "t1ce", "flair", "t2"):
        nifti_declaring(subject / f"S1_{suffix}.nii", (1000, 1000, 1000))
    got = capped(
        """
        from pathlib import Path
        from xgal.pool.importers.brats import import_brats
        from xgal.pool.importers.volumes import import_volumes

        tmp = Path(sys.argv[1])
        pool, report = import_volumes(tmp / "list.csv", tmp / "pool", size=16)
        result.update(written=report.written, skipped=report.skipped)
        pool, report = import_brats(tmp / "brats", tmp / "brats-pool", size=16)  # reads with nibabel
        result.update(brats=pool.count, brats_skipped=report.skipped)
        """,
        tmp_path,
    )
    limit = f"1000x1000x1000 = 1,000,000,000 voxels, above the limit of {DEFAULT_MAX_VOXELS:,}"
    assert got["written"] == 4 and got["skipped"] == [
        f"{tmp_path / 'huge.nii'}: {limit} ({ENV_MAX_VOXELS}, or --max-voxels at import)"
    ]
    assert got["brats"] == 0 and got["brats_skipped"][0].startswith(f"{subject / 'S1_seg.nii'}: {limit}")
    assert got["rss_mb"] < 300, got


def test_the_pixel_limit_comes_from_the_argument_the_environment_or_the_cli(tmp_path, monkeypatch):
    src = tmp_path / "png"
    src.mkdir()
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(src / "big.png")  # 2,400 pixels
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(src / "small.png")  # 400
    Image.fromarray(np.full((20, 20), 255, np.uint8)).save(src / "mask.png")
    write_csv(src / "labels.csv", ["image", "mask"], [["big.png", ""], ["small.png", "mask.png"]])
    before = Image.MAX_IMAGE_PIXELS
    pool, report = import_images(src, src / "labels.csv", tmp_path / "a", size=16, max_pixels=1000)
    assert pool.count == 1 and report.skipped == [
        f"{src / 'big.png'}: 2,400 pixels, above the limit of 1,000 "
        f"({ENV_MAX_PIXELS}, or --max-pixels at import)"
    ]
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's guard is set while xgal decodes, then restored
    monkeypatch.setenv(ENV_MAX_PIXELS, "300")
    pool, report = import_images(src, src / "labels.csv", tmp_path / "b", size=16)
    assert pool.count == 0 and len(report.skipped) == 2 and "small.png: 400 pixels" in report.skipped[1]
    with pytest.raises(InvalidArgument, match=r"mask.png: 400 pixels, above the limit of 300"):
        read_mask(src / "mask.png", 20, 20, "each scan")  # as `xgal annotations add --masks` reads
    monkeypatch.setenv(ENV_MAX_PIXELS, "lots")
    with pytest.raises(InvalidArgument, match=f"{ENV_MAX_PIXELS} must be a whole number"):
        import_images(src, src / "labels.csv", tmp_path / "c", size=16)
    monkeypatch.delenv(ENV_MAX_PIXELS)
    # A frame larger than its header (an ICO posing as a PNG, 16x16 in its directory) would be
    # caught by PIL's guard set to the limit; PIL is not let open an ICO at all.
    big = io.BytesIO()
    Image.fromarray(np.zeros((1200, 1200), np.uint8)).save(big, "PNG")
    (src / "trick.png").write_bytes(ico_holding(big.getvalue()))
    with pytest.raises(
        InvalidArgument, match=r"trick.png: not a readable mask \(not a PNG, JPEG, TIFF, BMP file\)"
    ):
        read_mask(src / "trick.png", 16, 16, "each scan", max_pixels=1_000_000)
    common = ("pool", "import", "images", src, "--labels", src / "labels.csv", "--size", 16)
    res = run_xgal(*common[:4], tmp_path / "cli", *common[4:], "--max-pixels", 1000, timeout=120)
    assert res.returncode == 2 and "--allow-skips" in res.stderr
    assert "big.png: 2,400 pixels, above the limit of 1,000" in res.stdout + res.stderr


def test_a_dicom_far_larger_than_its_declared_pixels_is_not_read_whole(tmp_path):
    """pydicom reads a file whole, pixel data included: a file of many MB declaring 64x48 is
    refused by name from its header and its size, and so is a multi-frame file."""
    src = tmp_path / "dcm"
    src.mkdir()
    write_dicom(src / "ok.dicom", scan())
    write_dicom(src / "fat.dicom", scan())
    with open(src / "fat.dicom", "ab") as f:
        f.write(bytes(20 << 20))  # 20 MB after the pixel data
    write_dicom(src / "frames.dicom", rows=8, columns=8, frames=3, rle=True)
    write_csv(src / "boxes.csv", ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
              [[n, "Nodule", 1, 1, 4, 4] for n in ("ok", "fat", "frames")])  # fmt: skip
    from xgal.pool.importers.dicom import import_dicom

    pool, report = import_dicom(src, src / "boxes.csv", tmp_path / "pool", size=16)
    assert pool.count == 1
    assert (
        report.skipped[0].startswith(f"{src / 'fat.dicom'}: 20,")
        and "far more than its 48x64" in report.skipped[0]
    )
    assert (
        report.skipped[1] == f"{src / 'frames.dicom'}: 3 frames; only single-frame 2-D images are supported"
    )
