"""Files the importer tests write: real decompression bombs (a PNG of 400 M pixels in 48 KB, an
ICO whose frame is bigger than its directory says, DICOM and NIfTI headers declaring more than
is there), small DICOM scans and CSVs, and a Python process capped in memory and time to read
them in."""

from __future__ import annotations

import csv
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, generate_uid

from xgal.pool.importers.safety import ENV_MAX_PIXELS

CAP_BYTES = 2 << 30  # the bomb processes' address space: an import that decodes a bomb dies
ROOT = Path(__file__).resolve().parents[1]


def write_csv(path, header, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A real PNG of `width` x `height` black 1-bit pixels, compressed row by row (never held
    whole): 20,000² is 400 M pixels in 48 KB."""
    row = bytes(1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def ico_holding(png: bytes, side: int = 16) -> bytes:
    """An ICO whose directory says `side` x `side` and whose one frame is `png`: PIL opens it by
    its content whatever its name, and the frame, not the directory, is what it decodes."""
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", side, side, 0, 0, 1, 8, len(png), 22) + png


def capped(code: str, *args: object) -> dict:
    """Run `code` in a fresh interpreter with at most 2 GiB of address space and 60 s; it leaves
    a dict in `result`, returned with the process's peak resident memory (`rss_mb`)."""
    prelude = "import json, resource, sys\nresult = {}\n"
    coda = (
        # VmHWM: this process's own peak (ru_maxrss keeps the forking parent's across exec).
        "\nresult['rss_mb'] = next(int(l.split()[1]) for l in open('/proc/self/status')"
        " if l.startswith('VmHWM:')) / 1024\n"
        "print(json.dumps(result))\n"
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    full_env.pop(ENV_MAX_PIXELS, None)  # the default limit
    res = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code) + coda, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
        env=full_env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_dicom(
    path, pixels=None, *, rows=None, columns=None, frames=None, window=None, rle=False, deflated=False
):
    """A DICOM file: `pixels` (uint16) stored plainly (the whole dataset zipped with `deflated`),
    or a header declaring `rows` x `columns` (x `frames`) over one tiny RLE fragment (`rle`)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = (
        RLELossless if rle else DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    )
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape if pixels is not None else (rows, columns)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames:
        ds.NumberOfFrames = frames
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rle:  # the RLE header (2 segments for 16 bits) and one run of 128 zeros in each
        header = struct.pack("<16I", 2, 64, 66, *[0] * 13)
        ds.PixelData = encapsulate([header + b"\x81\x00\x81\x00"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def scan() -> np.ndarray:
    base = np.full((64, 48), 500, dtype=np.uint16)
    base[8:24, 8:24] = 3500
    return base


def nifti_declaring(path: Path, shape: tuple[int, int, int]) -> None:
    """A .nii of 8 voxels whose header declares `shape` (the voxels are never there)."""
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[40:56] = struct.pack("<8h", 3, *shape, 1, 1, 1, 1)
    path.write_bytes(bytes(data))
