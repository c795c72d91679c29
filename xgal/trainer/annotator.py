"""Who supplies labels and ROIs for the selected samples.

`Annotator` is the interface a real annotation tool implements (e.g. one that opens a task in
a labelling service and waits for the radiologist). `OracleAnnotator` is the simulation: it
reads the true label and expert ROI of exactly the requested IDs from a labelled pool, and
nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool


class Annotator(Protocol):
    def annotate(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Labels [n] int64 and ROI masks [n, H, W] uint8 for `ids`, in that order.

        The loop stores the answer before it does anything else and never asks for it again.
        Only a run that died while waiting for an answer asks again, then for the same IDs in
        the same order: a tool can take that request as the one already open."""
        ...


class OracleAnnotator:
    def __init__(self, pool: Pool) -> None:
        if not pool.has_labels:
            raise InvalidArgument(f"the oracle needs a pool with labels; {pool.path} has none")
        self.pool = pool
        self.index = {sample_id: i for i, sample_id in enumerate(pool.ids().tolist())}
        self.requested: list[str] = []  # every ID it was ever asked about (for audits and tests)

    def annotate(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        missing = [i for i in ids if i not in self.index]
        if missing:
            raise KeyError(f"IDs not in the pool: {missing[:5]}")
        self.requested.extend(ids)
        rows = self.pool.take([self.index[i] for i in ids], ("labels", "rois"))
        return rows["labels"], rows["rois"]
