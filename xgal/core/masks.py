"""What an ROI mask means: any pixel set is an ROI, an all-zero mask is none (not drawn, beyond
the ROI budget, or a pool without masks). Every part that asks "does this scan have an ROI"
asks here, so the pool's counts, the ROI choice per scan and the hand-off agree."""

from __future__ import annotations

import numpy as np


def roi_present(rois: np.ndarray) -> np.ndarray:
    """[n] bool: which of `rois` ([n, H, W] masks, any dtype) has an ROI."""
    return rois.reshape(len(rois), -1).max(1, initial=0) > 0
