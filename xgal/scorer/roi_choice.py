"""Which ROI each scan's misalignment is measured against, and the engine run that measures it.

The expert's ROI and the body (`xgal.pool.body`) are masks given to the graph; the learned ROI is
the graph's own (its ROI head, LEARNED_ROI_OUTPUTS), so a graph serves every source in one run
and the choice per scan is made here, the one place every scoring path (the pipeline behind
ScorePool, Ray and replicas, and ScoreStream) goes through.
"""

from __future__ import annotations

import numpy as np

from xgal.core.acquisition import RoiSource
from xgal.core.contract import ROW_ROI_SOURCES
from xgal.pool.body import rois_for
from xgal.scorer.engines.base import BatchScores, Engine

EXPERT, BODY, LEARNED = (ROW_ROI_SOURCES.index(s) for s in ("expert", "body", "learned"))


def score_against_roi(
    engine: Engine, images: np.ndarray, rois: np.ndarray, source: RoiSource | str, **want: bool
) -> tuple[BatchScores, np.ndarray]:
    """Run `engine` on a batch with each scan's misalignment measured against the ROI `source`
    picks for it: the scores (`dice` and `roi_area` those of that ROI) and a ROW_ROI_SOURCES
    code per scan ("none" where the ROI used is empty). `want` passes on to `Engine.run`."""
    source = RoiSource(source)
    if source.learned:
        given, body = rois, np.zeros(len(rois), dtype=bool)
    else:
        given, body = rois_for(images, rois, source)
    if source.learned:  # asked only then: an engine without a learned ROI need not know the word
        want = {**want, "want_learned": True}
    s = engine.run(images, given, **want)
    codes = np.where(body, BODY, EXPERT).astype(np.uint8)
    if source.learned:
        if s.learned_dice is None or s.learned_area is None:
            raise RuntimeError(f"engine {engine.name} was asked for the learned ROI and returned none")
        use = source.learned_rows(rois)
        s.dice = np.where(use, s.learned_dice, s.dice)
        s.roi_area = np.where(use, s.learned_area, s.roi_area)
        codes[use] = LEARNED
    codes[s.roi_area <= 0] = 0
    return s, codes
