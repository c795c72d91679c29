"""3-D volumes (NIfTI, NRRD, MHA/MHD: whatever SimpleITK reads) sliced into a 2-D pool, each
slice keeping its patient.

LIST.csv: `patient,image[,label]` (paths relative to the CSV's folder; one that leaves it, by an
absolute path, `..` or a symlink, is refused unless `allow_outside_paths`); `label` is a label
map of the same grid (0 = background). Each volume is turned to one orientation first (LPS, from
its direction matrix: `SimpleITK.DICOMOrient`), so slices along `axis` ("axial", the default)
are axial however the file stores them; rows run anterior to posterior, columns patient right to
left, as radiologists view them. Intensities: a window (`window=(centre, width)`, in the file's
units, e.g. HU) or the volume's 0.5–99.5 percentiles over its non-zero voxels. Slices are padded
to square and resized to `size`. Which slices are kept (`keep`): `all`, or `lesion` (at least
`min_lesion` labelled voxels). The class (`classes`): `lesion` (a slice with at least
`min_lesion` labelled voxels is "lesion", else "no lesion"), or `dominant` (the most frequent
non-zero label value, named `label-<v>` or by `names`, e.g. {1: "necrosis", 2: "edema"}); the
ROI is the lesion (every non-zero label) or, with `dominant`, that value's region. Without a
`label` column the pool is unlabelled and has no ROIs.

A label map of whole values, whatever its dtype (0.0, 1.0, 2.0 in a float file), is labels; one
with fractional values (a probability map, a mask resampled with interpolation) is not rounded
but thresholded by `common.soft_mask`: above 0.5 when its values lie in [0, 1], else above half
its range; it has no label values, so `classes="dominant"` skips it by name. A volume whose
voxels (× components) exceed the voxel limit (`safety`) is skipped from its header, unread.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.id_map import IdMap
from xgal.pool.importers.common import (
    ImportError_,
    ImportReport,
    Sample,
    fit_square,
    integral,
    read_csv,
    resize_image,
    resize_mask,
    robust_scale,
    soft_mask,
    to_pixels,
    window_unit,
    write_pool,
)
from xgal.pool.importers.safety import check_voxels, list_cells, refuse_outside, voxel_limit

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # array axes of an LPS volume (z, y, x)
KEEPS = ("all", "lesion")
CLASS_RULES = ("lesion", "dominant")


def _read(path: Path, limit: int | None) -> np.ndarray:
    """The volume as an array (z, y, x) turned to LPS; its header is checked first (3-D, within
    the voxel limit), so an oversized volume is never read."""
    import SimpleITK as sitk

    if not path.is_file():
        raise ImportError_(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        dims = reader.GetDimension()
        if dims == 3:
            components = reader.GetNumberOfComponents()
            check_voxels(path, [*reader.GetSize(), *([components] if components > 1 else [])], limit)
            image = reader.Execute()
    except RuntimeError as exc:
        raise ImportError_(f"{path}: not a volume SimpleITK can read ({str(exc).splitlines()[-1]})") from None
    if dims != 3:
        raise ImportError_(f"{path}: a {dims}-D image, not a 3-D volume")
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def _label_map(path: Path, values: np.ndarray, classes: str) -> np.ndarray:
    """A label map as whole labels (int64); fractional values (a probability map) as 0/1 by
    `soft_mask`, never rounded; refused for `dominant`, which needs label values."""
    if integral(values):
        return values.astype(np.int64)
    if classes == "dominant":
        odd = values[~np.isfinite(values) | (values != np.round(values))]
        raise ImportError_(
            f"{path}: a label map with fractional values (e.g. {float(odd.flat[0]):g}): a probability "
            "map has no label values; import it with classes 'lesion'"
        )
    return soft_mask(values).astype(np.int64)


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
    max_voxels: int | None = None,
    allow_outside_paths: bool = False,
    anonymise: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    """Import the volumes `list_csv` lists as 2-D slices into a pool at `out` (module doc); with
    `anonymise`, slice IDs that name no patient (`xgal.pool.id_map`; the patient stays the
    sample's group, which splits read and the radiologist never sees)."""
    list_csv = Path(list_csv)
    max_voxels = voxel_limit(max_voxels)  # read once: a bad $XGAL_MAX_VOLUME_VOXELS fails before writing
    if axis not in AXES or keep not in KEEPS or classes not in CLASS_RULES:
        raise InvalidArgument(
            f"axis must be one of {list(AXES)}, keep one of {KEEPS}, classes one of {CLASS_RULES}; "
            f"got {axis!r}, {keep!r}, {classes!r}"
        )
    rows = read_csv(list_csv, [], ("patient", "image", "label"))
    if not {"patient", "image"} <= set(rows[0]):
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
    refuse_outside(base, list_cells(list_csv, rows, ("image", "label")), allow_outside_paths)
    refuse_outside(  # a detached header (.mhd, .nhdr) names its data file: that must stay inside too
        base,
        (
            (f"{base / r[column]} (its data file)", data)
            for r in rows
            for column in ("image", "label")
            if r.get(column) and (base / r[column]).is_file()
            for data in detached_data(base / r[column], base)
        ),
        allow_outside_paths,
    )

    id_map = (IdMap(secrets.token_bytes(32)) if overwrite else IdMap.for_pool(out)) if anonymise else None
    if id_map is not None:
        id_map.write(out)  # the key before any sample: a resumed import names slices alike

    def convert(item: object) -> Iterator[Sample]:
        row = dict(item)  # type: ignore[call-overload]
        patient = row["patient"].strip()
        vol = _read(base / row["image"], max_voxels).astype(np.float64)
        seg = None
        if labelled:
            seg = _label_map(base / row["label"], _read(base / row["label"], max_voxels), classes)
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
            sample_id = f"{patient}_{axis[0]}{k:03d}"
            if id_map is not None:
                sample_id = id_map.anonymise(sample_id, row["image"])
            yield Sample(
                sample_id,
                pixels,
                resize_mask(fit_square(roi, "pad"), size),
                label,
                patient,
            )

    def convert_and_record(item: object) -> Iterator[Sample]:
        yield from convert(item)
        if id_map is not None:  # the map back, as each volume's slices are made
            id_map.write(out)

    return write_pool(
        out,
        rows,
        convert_and_record,
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


def detached_data(header: Path, base: Path) -> list[str]:
    """The data files a detached header names (MetaImage `ElementDataFile`, NRRD `data file`),
    relative to `base`, for the same outside-the-folder check as the list's own paths; none for
    a file that holds its data. A list of files or a pattern is refused: xgal cannot check it."""
    suffix = header.name.lower()
    if not suffix.endswith((".mhd", ".nhdr")):
        return []
    key = re.compile(r"^\s*(ElementDataFile\s*=|data\s*file\s*:|datafile\s*:)\s*(.*?)\s*$", re.IGNORECASE)
    with open(header, "rb") as f:
        head = f.read(1 << 16).decode("latin-1")
    for line in head.splitlines():
        m = key.match(line)
        if m is None:
            continue
        value = m.group(2)
        if value.upper() in ("LOCAL", ""):
            return []
        if value.upper().startswith("LIST") or " " in value or "%" in value:
            raise ImportError_(
                f"{header}: a data file list or pattern ({value!r}); save the volume as one file"
            )
        return [os.path.relpath(header.parent / value, base) if not os.path.isabs(value) else value]
    return []
