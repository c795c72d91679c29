"""The simulation's annotator: the true label and expert ROI of exactly the requested IDs, read
from a labelled pool, and nothing else (it never builds the request's hints)."""

from __future__ import annotations

import numpy as np

from xgal.annotate.annotator import PendingRequest
from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool


class OracleAnnotator:
    def __init__(self, pool: Pool) -> None:
        if not pool.has_labels:
            raise InvalidArgument(f"the oracle needs a pool with labels; {pool.path} has none")
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
        return rows["labels"], rows["rois"]
