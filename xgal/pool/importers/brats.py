"""NIfTI volumes in the BraTS layout (nibabel), sliced into 2-D as the authors prepared them.

    SRC/<subject>/<subject>_t1ce.nii.gz, _flair.nii.gz, _t2.nii.gz, _seg.nii.gz  (or .nii)

Every volume is first turned to the closest canonical orientation (RAS+, from its affine:
`nibabel.as_closest_canonical`), so the third axis is inferior→superior and slices are axial
however the file stores them. Per subject the chosen modalities are stacked as channels
(default T1CE, FLAIR, T2), each scaled to [0, 1] by its own 0.5-99.5 percentile window over
the brain. Axial slices with at least `min_area` tumour voxels are kept; the class is the
dominant tumour region of the slice (edema = label 2, necrotic / non-enhancing core = 1,
enhancing tumour = 4) and the ROI that region's mask. Images and ROIs are resized to `size`.
A segmentation with fractional values is not a BraTS label map and is skipped, never rounded; a
volume whose header declares more voxels than the voxel limit (`safety`) is skipped unread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from xgal.pool.format import Pool
from xgal.pool.importers.common import (
    ImportError_,
    ImportReport,
    Sample,
    integral,
    resize_image,
    resize_mask,
    robust_scale,
    to_pixels,
    write_pool,
)
from xgal.pool.importers.safety import check_voxels, voxel_limit

REGIONS = (("edema", 2), ("necrotic", 1), ("enhancing", 4))


def _volume(subject: Path, suffix: str, limit: int | None = None) -> tuple[Path, np.ndarray]:
    """The file of a modality (or `seg`) and its voxels in RAS+; the header's shape is checked
    against the voxel limit before the data is read (nibabel loads lazily)."""
    import nibabel as nib

    for ext in (".nii.gz", ".nii"):
        path = subject / f"{subject.name}_{suffix}{ext}"
        if path.is_file():
            try:
                image = nib.load(path)
            except Exception as exc:  # nibabel raises several types for damaged files
                raise ImportError_(f"{path}: not a readable NIfTI volume ({exc})") from None
            check_voxels(path, image.shape, limit)
            try:
                return path, np.asarray(nib.as_closest_canonical(image).get_fdata(dtype=np.float32))
            except Exception as exc:
                raise ImportError_(f"{path}: not a readable NIfTI volume ({exc})") from None
    raise ImportError_(f"{subject}: no {subject.name}_{suffix}.nii(.gz)")


def import_brats(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 224,
    modalities: Sequence[str] = ("t1ce", "flair", "t2"),
    min_area: int = 100,
    shard_size: int = 4096,
    overwrite: bool = False,
    max_voxels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Pool, ImportReport]:
    """Import the BraTS subjects under `folder` as axial slices into a pool (module doc)."""
    folder = Path(folder)
    max_voxels = voxel_limit(max_voxels)  # read once: a bad $XGAL_MAX_VOLUME_VOXELS fails before writing
    subjects = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not subjects:
        raise FileNotFoundError(f"no subject folders under {folder}")

    def convert(item: object) -> Iterator[Sample]:
        subject = Path(str(item))
        seg_path, seg_values = _volume(subject, "seg", max_voxels)
        if not integral(seg_values):
            raise ImportError_(
                f"{seg_path}: fractional values; a BraTS segmentation holds the labels 0, 1, 2, 4"
            )
        seg = seg_values.astype(np.int16)
        vols = [_volume(subject, m, max_voxels)[1] for m in modalities]
        for m, v in zip(modalities, vols, strict=True):
            if v.shape != seg.shape:
                raise ImportError_(f"{subject}: {m} is {v.shape}, the segmentation is {seg.shape}")
        brain = vols[0] > 0
        scaled = [robust_scale(v, mask=brain) for v in vols]
        for z in range(seg.shape[2]):
            s = seg[:, :, z]
            if int((s > 0).sum()) < min_area:
                continue
            areas = [int((s == code).sum()) for _, code in REGIONS]
            label = int(np.argmax(areas))
            roi = (s == REGIONS[label][1]).astype(np.uint8)
            # NIfTI stores x fastest; transpose so rows run top to bottom as radiologists view it.
            img = np.stack([resize_image(v[:, :, z].T.astype(np.float32), size) for v in scaled])
            yield Sample(f"{subject.name}_z{z:03d}", to_pixels(img, "uint8"), resize_mask(roi.T, size), label)

    return write_pool(
        out,
        [str(s) for s in subjects],
        convert,
        image_shape=(len(modalities), size, size),
        class_names=[name for name, _ in REGIONS],
        shard_size=shard_size,
        overwrite=overwrite,
        description=(
            f"imported from BraTS volumes in {folder} ({', '.join(modalities)}); axial slices of "
            "the volumes turned to RAS+"
        ),
        progress=progress,
    )
