"""The simulation's annotator: the true label and expert ROI of exactly the requested IDs, read
from a labelled pool, and nothing else (it never builds the request's hints).

An ROI budget (`roi_fraction` < 1) simulates a radiologist who draws ROIs on only part of what
they label: in each request, the ⌈f·n⌉ scans asked about first (the selection's rank order; the
initial set's drawn order) come back with their ROI, the others with none."""

from __future__ import annotations

import math

import numpy as np

from xgal.annotate.annotator import PendingRequest
from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool


class OracleAnnotator:
    def __init__(self, pool: Pool, roi_fraction: float = 1.0) -> None:
        if not pool.has_labels:
            raise InvalidArgument(f"the oracle needs a pool with labels; {pool.path} has none")
        if not 0.0 <= roi_fraction <= 1.0:
            raise InvalidArgument(f"roi_fraction must be 0 to 1, got {roi_fraction}")
        self.roi_fraction = roi_fraction
        self.pool = pool
        self.index = {sample_id: i for i, sample_id in enumerate(pool.ids().tolist())}
        self.requested: list[str] = []  # every ID it was ever asked about (for audits and tests)

    def annotate(self, request: PendingRequest) -> tuple[np.ndarray, np.ndarray]:
        ids = request.ids
        missing = [i for i in ids if i not in self.index]
        if missing:
            raise KeyError(f"IDs not in the pool: {missing[:5]}")
        self.requested.extend(ids)
        rows = self.pool.take([self.index[i] for i in ids], ("labels", "rois"))
        rois = rows["rois"]
        rois[math.ceil(self.roi_fraction * len(ids) - 1e-9) :] = 0  # beyond the ROI budget
        return rows["labels"], rois
