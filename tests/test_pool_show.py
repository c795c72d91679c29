"""`xgal pool show`: a contact sheet of a pool's scans with their ROIs outlined, IDs and classes."""

import numpy as np
from helpers import run_xgal
from PIL import Image

from xgal.annotate.contact_sheet import CAPTION, TILE, sample_rows
from xgal.annotate.hints import OUTLINES
from xgal.pool.synth import synth_pool


def test_the_contact_sheet_shows_each_scan_with_its_roi(tmp_path):
    pool = synth_pool(tmp_path / "pool", 40, seed=0, image_size=32)
    res = run_xgal("pool", "show", pool.path, "--out", tmp_path / "sheet.png", "--count", 12, timeout=120)
    assert res.returncode == 0 and "sheet.png" in res.stdout, res.stderr
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (2 * (TILE + CAPTION), 8 * TILE, 3)  # 12 scans, 8 a row
    green = (sheet == (np.array(OUTLINES["expert"][0]) * 255).astype(np.uint8)).all(axis=-1)
    rows = sample_rows(pool, 12, 0)
    rois = pool.take(rows, ("rois",))["rois"]
    for k, roi in enumerate(rois):  # each tile has an outline exactly when its scan has an ROI
        x, y = (k % 8) * TILE, (k // 8) * (TILE + CAPTION)
        assert green[y : y + TILE, x : x + TILE].any() == bool(roi.any()), k
    assert len(sample_rows(pool, 100, 0)) == 40 and list(sample_rows(pool, 12, 0)) == list(rows)
