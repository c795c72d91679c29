"""Samples that must not be scored, and what to do with them (`OnBadSample`).

A bad sample is a problem of one sample, not of the file that holds it: ROI values other than 0
and 1, NaN or Inf pixels (float dtypes). `sample_problems` is the one check, used by
`Pool.verify`, the pool pipeline and ScoreStream, so they agree on what is bad and why.
Problems of a whole shard (a checksum mismatch, a truncated or missing file, an array of the
wrong shape) are not bad samples: they always fail, whatever the policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from xgal.core.errors import InvalidArgument


class OnBadSample(StrEnum):
    FAIL = "fail"  # the run fails, naming the sample (the default)
    SKIP = "skip"  # the sample is not scored and is listed in the result's `skipped`

    @classmethod
    def parse(cls, value: OnBadSample | str) -> OnBadSample:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(e.value for e in cls)
            raise InvalidArgument(f"on_bad_sample must be one of {choices}; got {value!r}") from None


@dataclass(frozen=True)
class SkippedSample:
    id: str
    reason: str


def sample_problems(rois: np.ndarray, images: np.ndarray | None = None) -> list[tuple[int, str]]:
    """(row, reason) for every sample of a batch that must not be scored, in row order.
    `rois` [N, H, W]; `images` [N, ...] may be left out when its dtype is an integer one (every
    value of those is a pixel)."""
    n = int(rois.shape[0])
    reasons: dict[int, list[str]] = {}
    if n and rois.size:
        peak = rois.reshape(n, -1).max(axis=1)
        for row in np.flatnonzero(peak > 1).tolist():
            reasons.setdefault(row, []).append(
                f"its ROI holds values other than 0 and 1 (max {int(peak[row])})"
            )
    if images is not None and images.dtype.kind in "fc" and n and images.size:
        flat = images.reshape(n, -1)
        nan = np.isnan(flat).any(axis=1)
        inf = np.isinf(flat).any(axis=1)
        for row in np.flatnonzero(nan | inf).tolist():
            kinds = " and ".join(k for k, bad in (("NaN", nan[row]), ("Inf", inf[row])) if bad)
            reasons.setdefault(row, []).append(f"its {images.dtype} pixels hold {kinds}")
    return [(row, "; ".join(reasons[row])) for row in sorted(reasons)]
