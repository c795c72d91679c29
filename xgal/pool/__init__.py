"""Pools (docs/design.md §3): the format (sharded .npy memory maps and a manifest), the importers
of hospital data, splits by patient or by sample, anonymised IDs and their key (`id_map`), the
synthetic pools of the demo, and the body mask (`body`: a weak ROI found in the image itself).

A pool is read by the scorer (to score it), the loop (labels and ROIs in simulation) and the
hand-off, so it lives beside all of them rather than inside one; the format needs NumPy alone
(the importers need Pillow, pydicom, nibabel, SimpleITK; the body mask scipy).
"""

from xgal.pool.format import Pool, PoolFormatError, PoolWriter

__all__ = ["Pool", "PoolFormatError", "PoolWriter"]
