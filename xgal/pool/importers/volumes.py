"""3-D volumes (NIfTI, NRRD, MHA/MHD: whatever SimpleITK reads) sliced into a 2-D pool, each
slice keeping its patient.

LIST.csv: `patient,image[,label]` (paths relative to the CSV's folder); `label` is a label map
of the same grid (0 = background). Each volume is turned to one orientation first (LPS, from its
direction matrix: `SimpleITK.DICOMOrient`), so slices along `axis` ("axial", the default) are
axial however the file stores them; rows run anterior to posterior, columns patient right to
left, as radiologists view them. Intensities: a window (`window=(centre, width)`, in the file's
units, e.g. HU) or the volume's 0.5–99.5 percentiles over its non-zero voxels. Slices are padded
to square and resized to `size`. Which slices are kept (`keep`): `all`, or `lesion` (at least
`min_lesion` labelled voxels). The class (`classes`): `lesion` (a slice with at least
`min_lesion` labelled voxels is "lesion", else "no lesion"), or `dominant` (the most frequent
non-zero label value, named `label-<v>` or by `names`, e.g. {1: "necrosis", 2: "edema"}); the
ROI is the lesion (every non-zero label) or, with `dominant`, that value's region. Without a
`label` column the pool is unlabelled and has no ROIs.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.importers.common import (
    ImportError_,
    ImportReport,
    Sample,
    fit_square,
    resize_image,
    resize_mask,
    robust_scale,
    to_pixels,
    window_unit,
    write_pool,
)

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # array axes of an LPS volume (z, y, x)
KEEPS = ("all", "lesion")
CLASS_RULES = ("lesion", "dominant")


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    if not path.is_file():
        raise ImportError_(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImportError_(f"{path}: not a volume SimpleITK can read ({str(exc).splitlines()[-1]})") from None
    if image.GetDimension() != 3:
        raise ImportError_(f"{path}: a {image.GetDimension()}-D image, not a 3-D volume")
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def import_volumes(
    list_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    axis: str = "axial",
    window: tuple[float, float] | None = None,
    keep: str = "all",
    min_lesion: int = 1,
    classes: str = "lesion",
    names: Mapping[int, str] | None = None,
    pixel_dtype: str = "uint8",
    shard_size: int = 4096,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    list_csv = Path(list_csv)
    if axis not in AXES or keep not in KEEPS or classes not in CLASS_RULES:
        raise InvalidArgument(
            f"axis must be one of {list(AXES)}, keep one of {KEEPS}, classes one of {CLASS_RULES}; "
            f"got {axis!r}, {keep!r}, {classes!r}"
        )
    with open(list_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"patient", "image"} <= set(rows[0]):
        raise InvalidArgument(f"{list_csv}: needs the columns patient,image[,label] and at least one row")
    labelled = "label" in rows[0] and any((r.get("label") or "").strip() for r in rows)
    if labelled and not all((r.get("label") or "").strip() for r in rows):
        raise InvalidArgument(f"{list_csv}: give a label map for every volume, or for none")
    if keep == "lesion" and not labelled:
        raise InvalidArgument("keep 'lesion' needs label maps (a label column)")
    values = sorted(names) if names else []
    class_names = (
        ["no lesion", "lesion"]
        if classes == "lesion"
        else [(names or {}).get(v, f"label-{v}") for v in values]
        if values
        else []
    )
    if labelled and classes == "dominant" and not values:
        raise InvalidArgument("classes 'dominant' needs the label values and their names (names={1: ...})")
    base = list_csv.parent
    ax = AXES[axis]

    def convert(item: object) -> Iterator[Sample]:
        row = dict(item)  # type: ignore[call-overload]
        patient = row["patient"].strip()
        vol = _read(base / row["image"]).astype(np.float64)
        seg = None
        if labelled:
            seg = np.rint(_read(base / row["label"])).astype(np.int64)
            if seg.shape != vol.shape:
                raise ImportError_(
                    f"{base / row['label']}: label map {seg.shape} is not the image's {vol.shape}"
                )
        unit = window_unit(vol, window) if window is not None else robust_scale(vol, mask=vol != 0)
        for k in range(vol.shape[ax]):
            img = np.take(unit, k, axis=ax)
            lab = np.take(seg, k, axis=ax) if seg is not None else None
            lesion = int((lab > 0).sum()) if lab is not None else 0
            if keep == "lesion" and lesion < min_lesion:
                continue
            roi = np.zeros(img.shape, np.uint8) if lab is None else (lab > 0).astype(np.uint8)
            label = -1
            if lab is not None and classes == "lesion":
                label = int(lesion >= min_lesion)
            elif lab is not None:
                present = [v for v in values if (lab == v).any()]
                if not present:
                    continue  # no labelled region here: no class to give it
                dominant = max(present, key=lambda v: ((lab == v).sum(), -v))
                label, roi = values.index(dominant), (lab == dominant).astype(np.uint8)
            pixels = to_pixels(
                resize_image(fit_square(img.astype(np.float32), "pad"), size)[None], pixel_dtype
            )
            yield Sample(
                f"{patient}_{axis[0]}{k:03d}",
                pixels,
                resize_mask(fit_square(roi, "pad"), size),
                label,
                patient,
            )

    return write_pool(
        out,
        rows,
        convert,
        image_shape=(1, size, size),
        class_names=class_names,
        pixel_dtype=pixel_dtype,
        with_labels=labelled,
        with_groups=True,
        shard_size=shard_size,
        overwrite=overwrite,
        description=f"{axis} slices of the volumes in {list_csv.name}, turned to LPS; class by {classes}",
        progress=progress,
    )
