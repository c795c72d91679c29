"""What an import refuses before it reads: files that declare more pixels than the limit
(decompression bombs), and list paths that leave the list's folder.

The limit is a number of pixels per file: width × height of an image or mask, × frames and
samples per pixel for DICOM. It comes from `max_pixels=` (`--max-pixels` at import), else the
environment variable `XGAL_MAX_IMAGE_PIXELS`, else 100 million. Why 100 million: the largest 2-D
medical images an import meets are far below it (a mammogram is about 4k × 5k = 20 MP, a CR chest
3k × 3k = 9 MP), and a file at the limit already costs the importer a few GB of float working
copies; whole-slide pathology (10 gigapixels) does not belong in these importers. A volume's
voxels (× components) have their own limit, `max_voxels=` (`--max-voxels`), else
`XGAL_MAX_VOLUME_VOXELS`, else 600 million: a CT of 512 × 512 × 2,000 slices fits, a header
declaring 1000³ does not (the volume importers hold about 30 bytes a voxel while slicing). The size is
read from the header first (PIL opens lazily; pydicom's Rows/Columns; SimpleITK's image
information; nibabel's header), so a small file declaring 20,000 × 20,000 pixels is refused by
name before a pixel is decoded. PIL's own guard (`Image.MAX_IMAGE_PIXELS`) is set to the same
limit while xgal decodes, its warning an error, so that a frame larger than the header said (an
ICO or a TIFF tile holding a bigger image) is refused too. PIL opens only the formats a scan
or a mask comes in (`IMAGE_FORMATS`): never EPS (which runs Ghostscript), ICO or the others.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from PIL import Image

from xgal.core.errors import InvalidArgument

ENV_MAX_PIXELS = "XGAL_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000
RAISE_IT = f"{ENV_MAX_PIXELS}, or --max-pixels at import"
ENV_MAX_VOXELS = "XGAL_MAX_VOLUME_VOXELS"
DEFAULT_MAX_VOXELS = 600_000_000
RAISE_VOXELS = f"{ENV_MAX_VOXELS}, or --max-voxels at import"

T = TypeVar("T")
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # what PIL may open: scans and masks come in these


class ImportError_(InvalidArgument):  # noqa: N801 - not the builtin ImportError
    """Source data that cannot become a pool; the message names the file and the problem."""


def _limit(value: int | None, env: str, default: int, unit: str) -> int:
    if value is None:
        text = os.environ.get(env, "").strip().replace("_", "")
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise InvalidArgument(f"{env} must be a whole number of {unit}, got {text!r}") from None
    if value < 1:
        raise InvalidArgument(f"the {unit[:-1]} limit must be at least 1, got {value}")
    return value


def pixel_limit(value: int | None = None) -> int:
    """The pixel limit: `value` when given, else $XGAL_MAX_IMAGE_PIXELS, else 100 million."""
    return _limit(value, ENV_MAX_PIXELS, DEFAULT_MAX_PIXELS, "pixels")


def voxel_limit(value: int | None = None) -> int:
    """A volume's voxel limit: `value` when given, else $XGAL_MAX_VOLUME_VOXELS, else 600 million."""
    return _limit(value, ENV_MAX_VOXELS, DEFAULT_MAX_VOXELS, "voxels")


def check_pixels(path: Path | str, dims: Sequence[int], limit: int | None = None) -> None:
    """Refuse (ImportError_) a file whose declared `dims` multiply to more than the pixel limit."""
    _check(path, dims, pixel_limit(limit), "pixels", RAISE_IT)


def check_voxels(path: Path | str, dims: Sequence[int], limit: int | None = None) -> None:
    """Refuse (ImportError_) a volume whose declared `dims` multiply to more than the voxel limit."""
    _check(path, dims, voxel_limit(limit), "voxels", RAISE_VOXELS)


def _check(path: Path | str, dims: Sequence[int], limit: int, unit: str, raise_it: str) -> None:
    count = 1
    for d in dims:
        count *= max(1, int(d))
    if count > limit:
        shape = "x".join(str(int(d)) for d in dims)
        raise ImportError_(f"{path}: {shape} = {count:,} {unit}, above the limit of {limit:,} ({raise_it})")


_PIL_SIZE = re.compile(r"Image size \((\d+) pixels\)")


def decode_image(path: Path, decode: Callable[[Image.Image], T], what: str, limit: int | None = None) -> T:
    """`decode(image)` of the file opened with PIL, once its declared size is within the limit;
    an unreadable file, or one above the limit (declared, or found while decoding), is an
    ImportError_ naming the file. `what` names it in the message ("image", "mask")."""
    limit = pixel_limit(limit)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(path, formats=IMAGE_FORMATS) as im:
                    check_pixels(path, im.size, limit)
                    return decode(im)
            except ImportError_:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                found = _PIL_SIZE.search(str(exc))
                count = f"{int(found.group(1)):,} pixels" if found else "more pixels"
                raise ImportError_(f"{path}: {count}, above the limit of {limit:,} ({RAISE_IT})") from None
            except Image.UnidentifiedImageError:
                kinds = ", ".join(IMAGE_FORMATS)
                raise ImportError_(f"{path}: not a readable {what} (not a {kinds} file)") from None
            except (OSError, ValueError, SyntaxError) as exc:
                raise ImportError_(f"{path}: not a readable {what} ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def outside(folder: Path, cell: str) -> Path | None:
    """Where `cell` (a path in a list, relative to `folder`) really is, symlinks followed, when
    that is not inside `folder`; None when it is inside (or the cell is empty)."""
    if not cell:
        return None
    root = folder.resolve()
    target = (folder / cell).resolve()
    return None if target.is_relative_to(root) else target


def list_cells(
    list_csv: Path | str, rows: Sequence[dict[str, str]], columns: Sequence[str]
) -> Iterator[tuple[str, str]]:
    """The path cells of a list's `columns`, as `refuse_outside` takes them: (where, path)."""
    for line, row in enumerate(rows, start=2):
        for column in columns:
            yield f"{list_csv} line {line} {column}", row.get(column, "")


def refuse_outside(
    folder: Path, cells: Iterable[tuple[str, str]], allow: bool, option: str = "--allow-outside-paths"
) -> None:
    """Refuse (InvalidArgument) a list whose paths leave `folder`: `cells` are (where, path) pairs,
    `where` naming the list's file and line; `allow` (the user's explicit option) accepts them."""
    if allow:
        return
    bad = []
    for where, cell in cells:
        target = outside(folder, cell)
        if target is not None:
            bad.append(f"{where}: {cell!r} is outside {folder} (it is {target})")
    if bad:
        more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InvalidArgument(
            "; ".join(bad[:3]) + more + f". Move the files into the folder, or accept with {option}"
        )
