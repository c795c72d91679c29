"""`xgal pool`: make (synthetic or imported), inspect and verify pools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xgal.cli.common import App, Bar, console, out
from xgal.core.errors import InvalidArgument

app = App(help="Make, inspect and verify pools.")
import_app = App(help="Build a pool from PNG/JPEG, DICOM, BraTS NIfTI or 3-D volumes (NIfTI, NRRD, MHA).")
app.add_typer(import_app, name="import")


@app.command("synth")
def pool_synth(
    out_dir: Path = typer.Argument(..., help="Folder to create the pool in."),
    size: int = typer.Option(2000, "--size", "-n", help="Number of scans."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same pool."),
    image_size: int = typer.Option(64, help="Side of the square images, in pixels."),
    classes: int = typer.Option(3, help="Number of lesion classes (2-4)."),
    marker_fraction: float = typer.Option(0.7, help="Fraction of scans with a burned-in tag."),
    marker_agreement: float = typer.Option(
        0.95, help="Probability that a tag names the true class (train split only)."
    ),
    split: str = typer.Option("train", help="'train' (tag correlated) or 'test' (tag random)."),
    shard_size: int = typer.Option(8192, help="Samples per shard file."),
    overwrite: bool = typer.Option(False, help="Replace an existing pool at OUT_DIR."),
) -> None:
    """Write a synthetic pool: lesions of K classes with ROI masks and a shortcut confounder."""
    from xgal.pool.synth import synth_pool

    with Bar(f"synthesising {split} pool", size) as bar:
        pool = synth_pool(
            out_dir,
            size,
            seed=seed,
            image_size=image_size,
            num_classes=classes,
            marker_fraction=marker_fraction,
            marker_agreement=marker_agreement,
            split=split,
            shard_size=shard_size,
            overwrite=overwrite,
            progress=bar.advance,
        )
    out.print(f"wrote {pool}")


ALLOW_SKIPS = typer.Option(
    False, help="Accept an import that skipped sources (listed); without it that is an error (exit 2)."
)
ANONYMISE = typer.Option(
    False,
    help="IDs that tell nothing (keyed hashes); the key and the map back to the files go to "
    "OUT_DIR.ids.json beside the pool, never shown to the radiologist.",
)
MAX_VOXELS = typer.Option(
    None,
    min=1,
    help="Skip a volume declaring more voxels, before reading it. Default: $XGAL_MAX_VOLUME_VOXELS, "
    "else 600000000.",
)
MAX_PIXELS = typer.Option(
    None,
    min=1,
    help="Skip a file declaring more pixels (width x height, x frames or slices), before decoding it. "
    "Default: $XGAL_MAX_IMAGE_PIXELS, else 100000000.",
)
ALLOW_OUTSIDE_PATHS = typer.Option(
    False, help="Read list paths that leave the list's folder (absolute, .., symlinks out); refused without."
)


def _import_done(pool: Any, report: Any, allow_skips: bool) -> None:
    """Say what was written and skipped; an import that wrote nothing, or skipped sources
    without --allow-skips, is an error, so that a script notices it."""
    out.print(f"wrote {pool}: {report.written} new samples, {len(report.skipped)} sources skipped")
    for line in report.skipped[:20]:
        console.print(f"  skipped {line}", markup=False)
    if len(report.skipped) > 20:
        console.print(f"  ... and {len(report.skipped) - 20} more")
    for line in report.notes[:20]:
        console.print(f"  note: {line}", markup=False)
    if len(report.notes) > 20:
        console.print(f"  ... and {len(report.notes) - 20} more notes")
    for line in report.warnings:
        out.print(f"[yellow]warning:[/] {line}")
    if getattr(report, "stretched", 0):
        out.print(
            f"[yellow]warning:[/] {report.stretched} non-square images were stretched to square "
            "(--fit pad or crop keeps their aspect)"
        )
    if pool.count == 0:
        raise InvalidArgument(f"the import wrote no samples to {pool.path}: every source was skipped (above)")
    if report.skipped and not allow_skips:
        raise InvalidArgument(
            f"{len(report.skipped)} sources were skipped (above); {pool.path} holds the {pool.count} "
            "imported. Fix them and import again into a new folder, or accept with --allow-skips"
        )


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


@import_app.command("images")
def import_images_cmd(
    folder: Path = typer.Argument(..., help="Folder of PNG/JPEG images."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    labels: Path | None = typer.Option(
        None, help="CSV: image[, label][, id][, mask] (no label: unlabelled); or --class-from-folder."
    ),
    boxes: Path | None = typer.Option(None, help="CSV of ROI boxes: image|id, x_min, y_min, x_max, y_max."),
    size: int = typer.Option(224, help="Side of the pool's square images."),
    channels: int = typer.Option(1, help="1 (grayscale) or 3 (RGB)."),
    fit: str = typer.Option("pad", help="Non-square images: pad or crop (aspect kept), or stretch."),
    uint16: bool = typer.Option(False, help="Store 16-bit pixels (16-bit PNGs keep their values)."),
    window: str | None = typer.Option(None, help="centre,width: map 16-bit values to the pool's range."),
    classes: str | None = typer.Option(None, help="Comma-separated class order (default: sorted)."),
    overwrite: bool = typer.Option(False),
    allow_skips: bool = ALLOW_SKIPS,
    max_pixels: int | None = MAX_PIXELS,
    allow_outside_paths: bool = ALLOW_OUTSIDE_PATHS,
    class_from_folder: bool = typer.Option(
        False, help="No CSV: every image in FOLDER/<class>/, its class the subfolder's name."
    ),
    anonymise: bool = ANONYMISE,
) -> None:
    """Import a folder of PNG/JPEG images with labels and ROI masks or boxes."""
    from xgal.pool.importers.images import import_images

    with Bar("importing images") as bar:
        pool, report = import_images(
            folder,
            labels,
            out_dir,
            size=size,
            channels=channels,
            boxes_csv=boxes,
            fit=fit,
            pixel_dtype="uint16" if uint16 else "uint8",
            window=_window(window),
            class_names=_names(classes),
            overwrite=overwrite,
            max_pixels=max_pixels,
            allow_outside_paths=allow_outside_paths,
            class_from_folder=class_from_folder,
            anonymise=anonymise,
            progress=bar.update,
        )
    _import_done(pool, report, allow_skips)
    _anonymised(anonymise, out_dir)


def _anonymised(anonymise: bool, out_dir: Path) -> None:
    if anonymise:
        from xgal.pool.id_map import id_map_path

        out.print(f"anonymised IDs; the key and the map back to the files: {id_map_path(out_dir)} (private)")


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        centre, width = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidArgument(f"--window takes centre,width (two numbers), got {text!r}") from None
    return centre, width


@import_app.command("dicom")
def import_dicom_cmd(
    folder: Path = typer.Argument(..., help="Folder of <image_id>.dicom / .dcm files."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    boxes: Path = typer.Option(..., help="CSV: image_id, class_name, x_min, y_min, x_max, y_max."),
    size: int = typer.Option(224),
    classes: str | None = typer.Option(None, help="Comma-separated classes to keep (default: all)."),
    window: str | None = typer.Option(None, help="centre,width; default: the file's VOI window."),
    uint16: bool = typer.Option(False, help="Store 16-bit pixels instead of 8-bit."),
    overwrite: bool = typer.Option(False),
    allow_skips: bool = ALLOW_SKIPS,
    max_pixels: int | None = MAX_PIXELS,
    allow_outside_paths: bool = ALLOW_OUTSIDE_PATHS,
) -> None:
    """Import DICOM images with a VinDr-CXR / SIIM-style box CSV."""
    from xgal.pool.importers.dicom import import_dicom

    win = _window(window)
    with Bar("importing DICOM") as bar:
        pool, report = import_dicom(
            folder,
            boxes,
            out_dir,
            size=size,
            window=win,
            classes=_names(classes),
            pixel_dtype="uint16" if uint16 else "uint8",
            overwrite=overwrite,
            max_pixels=max_pixels,
            allow_outside_paths=allow_outside_paths,
            progress=bar.update,
        )
    _import_done(pool, report, allow_skips)


@import_app.command("volumes")
def import_volumes_cmd(
    list_csv: Path = typer.Argument(..., help="CSV: patient, image[, label] (paths beside it)."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    size: int = typer.Option(224, help="Side of the pool's square slices."),
    axis: str = typer.Option("axial", help="axial | coronal | sagittal (after turning to LPS)."),
    window: str | None = typer.Option(None, help="centre,width in the file's units (e.g. 40,400 HU)."),
    keep: str = typer.Option("all", help="Slices kept: all, or lesion (at least --min-lesion voxels)."),
    min_lesion: int = typer.Option(1, help="Labelled voxels that make a slice a lesion slice."),
    classes: str = typer.Option("lesion", help="lesion (lesion / no lesion) or dominant (by --names)."),
    names: str | None = typer.Option(None, help="Label values' names for dominant: 1=necrosis,2=edema."),
    uint16: bool = typer.Option(False, help="Store 16-bit pixels."),
    overwrite: bool = typer.Option(False),
    allow_skips: bool = ALLOW_SKIPS,
    max_voxels: int | None = MAX_VOXELS,
    allow_outside_paths: bool = ALLOW_OUTSIDE_PATHS,
    anonymise: bool = ANONYMISE,
) -> None:
    """Import NIfTI, NRRD or MHA volumes (with label maps) as 2-D slices, each with its patient."""
    from xgal.pool.importers.volumes import import_volumes

    mapping = None
    if names:
        try:
            mapping = {int(k): v.strip() for k, v in (p.split("=", 1) for p in names.split(","))}
        except ValueError:
            raise InvalidArgument(f"--names takes value=name pairs, got {names!r}") from None
    with Bar("importing volumes") as bar:
        pool, report = import_volumes(
            list_csv,
            out_dir,
            size=size,
            axis=axis,
            window=_window(window),
            keep=keep,
            min_lesion=min_lesion,
            classes=classes,
            names=mapping,
            pixel_dtype="uint16" if uint16 else "uint8",
            overwrite=overwrite,
            max_voxels=max_voxels,
            allow_outside_paths=allow_outside_paths,
            anonymise=anonymise,
            progress=bar.update,
        )
    _import_done(pool, report, allow_skips)
    _anonymised(anonymise, out_dir)


@import_app.command("brats")
def import_brats_cmd(
    folder: Path = typer.Argument(..., help="Folder of BraTS subject folders."),
    out_dir: Path = typer.Argument(..., help="Pool to create (an unfinished one is resumed)."),
    size: int = typer.Option(224),
    modalities: str = typer.Option("t1ce,flair,t2", help="Channels, in order."),
    min_area: int = typer.Option(100, help="Least tumour voxels for a slice to be kept."),
    overwrite: bool = typer.Option(False),
    allow_skips: bool = ALLOW_SKIPS,
    max_voxels: int | None = MAX_VOXELS,
) -> None:
    """Import NIfTI volumes in the BraTS layout as axial slices (class = dominant region)."""
    from xgal.pool.importers.brats import import_brats

    with Bar("importing subjects") as bar:
        pool, report = import_brats(
            folder,
            out_dir,
            size=size,
            modalities=_names(modalities) or [],
            min_area=min_area,
            overwrite=overwrite,
            max_voxels=max_voxels,
            progress=bar.update,
        )
    _import_done(pool, report, allow_skips)


@app.command("info")
def pool_info(path: Path = typer.Argument(..., help="Pool folder.")) -> None:
    """Print a pool's manifest summary, its class counts and how many samples have an ROI."""
    import numpy as np

    from xgal.pool.format import Pool

    pool = Pool(path)
    pool.check()
    out.print(f"{pool.path}: {pool.count} samples, {pool.pixel_dtype}{list(pool.image_shape)}")
    out.print(f"classes: {pool.class_names or '(none)'}; labels: {'yes' if pool.has_labels else 'no'}")
    if pool.has_labels and pool.count:
        counts = np.bincount(pool.labels(), minlength=len(pool.class_names))
        names = pool.class_names or [str(i) for i in range(len(counts))]
        out.print("per class: " + ", ".join(f"{n} {c}" for n, c in zip(names, counts, strict=False)))
    out.print(f"with an ROI: {pool.roi_count()} of {pool.count}")
    if pool.has_groups:
        out.print(f"patients: {len(set(pool.groups().tolist()))}")
    out.print(f"shards: {len(pool.shards)}; {pool.description}")


@app.command("verify")
def pool_verify(path: Path = typer.Argument(..., help="Pool folder.")) -> None:
    """Recompute every checksum of a pool and list every bad sample (ROI values other than 0/1,
    NaN/Inf pixels). Exit 2 on the first damaged shard, or after listing the bad samples."""
    from xgal.pool.format import Pool, PoolFormatError

    pool = Pool(path)
    pool.verify(samples=False)
    bad = pool.bad_samples()
    for sample in bad:
        console.print(f"bad sample: {sample}", markup=False, highlight=False)
    if bad:
        raise PoolFormatError(
            f"{path}: {len(bad)} bad samples (listed above); score with --on-bad-sample skip to leave "
            "them out, or fix them"
        )
    out.print(f"{path}: all checksums match, {pool.count} samples, none bad")


@app.command("show")
def pool_show(
    path: Path = typer.Argument(..., help="Pool folder."),
    out_png: Path = typer.Option(Path("pool.png"), "--out", help="PNG to write."),
    count: int = typer.Option(48, min=1, help="Scans on the sheet (a seeded draw; all of a smaller pool)."),
    seed: int = typer.Option(0, help="Seed of the draw."),
) -> None:
    """A contact sheet of the pool's scans, each with its ROI outlined in green, its ID and its
    class: look at it before training."""
    from xgal.annotate.contact_sheet import contact_sheet
    from xgal.pool.format import Pool

    out.print(f"wrote {contact_sheet(Pool(path), out_png, count=count, seed=seed)}")


@app.command("split")
def pool_split(
    path: Path = typer.Argument(..., help="Pool to split."),
    by: str = typer.Option(
        "patient",
        help="patient: no patient in both parts (the pool's groups); sample: samples at random, "
        "stratified by class where the pool has labels (one scan per patient).",
    ),
    test_fraction: float = typer.Option(
        0.2, help="Share of the samples in the test pool (least, by patient)."
    ),
    seed: int = typer.Option(0, help="Seed of the draw."),
    out_train: Path = typer.Option(..., help="Training pool to create."),
    out_test: Path = typer.Option(..., help="Test pool to create."),
) -> None:
    """Split a pool into a training and a test pool: with no patient in both (--by patient), or
    by sample, stratified by class (--by sample). Says which patients, or how many of each
    class, went where."""
    from xgal.pool.format import Pool
    from xgal.pool.split import split_by_group, split_by_sample

    if by not in ("patient", "sample"):
        raise InvalidArgument(f"--by must be patient or sample, got {by!r}")
    split = split_by_group if by == "patient" else split_by_sample
    train, test = split(Pool(path), out_train, out_test, test_fraction=test_fraction, seed=seed)
    for part in (train, test):
        out.print(f"wrote {part.path}: {part.count} samples{_split_detail(part)}", markup=False)


def _split_detail(part: Any, shown: int = 50) -> str:
    """A split part's patients (the first `shown` by name), or its samples per class."""
    import numpy as np

    if part.has_groups:
        names = sorted(set(part.groups().tolist()))
        listed = ", ".join(names[:shown]) + (
            f", ... and {len(names) - shown} more" if len(names) > shown else ""
        )
        return f" of {len(names)} patients: {listed}"
    if part.has_labels:
        counts = np.bincount(part.labels(), minlength=len(part.class_names))
        return " (" + ", ".join(f"{n} {name}" for n, name in zip(counts, part.class_names, strict=True)) + ")"
    return ""
