"""One ScoreStream message: the client's pixels and ROIs checked, scored and ranked.

The client sends batches the server cannot read from disk; every byte is checked against the
model's input contract before it reaches the engine.
"""

from __future__ import annotations

import numpy as np

from xgal.core.acquisition import AcquisitionConfig, criteria
from xgal.core.ranking import kept, scored_batch
from xgal.core.wire import ranked_to_proto
from xgal.scorer.batcher import BatchedEngine
from xgal.v1 import scorer_pb2 as pb

# Images in one ScoreStream message; more is a client bug, not a batch to hold in memory.
MAX_STREAM_BATCH = 4096

__all__ = ["MAX_STREAM_BATCH", "score_message"]


def score_message(
    engine: BatchedEngine, req: pb.ScoreStreamRequest, config: AcquisitionConfig
) -> pb.ScoreStreamResponse:
    """One ScoreStream batch: its samples in the order sent, less those the missing-ROI
    policy excludes (as ScorePool leaves them out)."""
    c, h, w = engine.info.input_shape
    n = len(req.ids)
    dtype = np.dtype(engine.info.pixel_dtype).newbyteorder("<")
    if len(req.images) != n * c * h * w * dtype.itemsize or len(req.rois) != n * h * w:
        raise ValueError(
            f"batch of {n} IDs needs {n * c * h * w * dtype.itemsize} image bytes and {n * h * w} "
            f"ROI bytes; got {len(req.images)} and {len(req.rois)}"
        )
    if n > MAX_STREAM_BATCH:
        raise ValueError(f"a ScoreStream message holds at most {MAX_STREAM_BATCH} images, got {n}")
    if any(not i or "\x00" in i for i in req.ids):
        # NumPy's strings drop trailing NULs: such an ID would come back altered.
        raise ValueError("sample IDs must be non-empty and hold no NUL character")
    images = np.frombuffer(req.images, dtype=dtype).astype(engine.info.pixel_dtype).reshape(n, c, h, w)
    rois = np.frombuffer(req.rois, dtype=np.uint8).reshape(n, h, w)
    if n and int(rois.max()) > 1:
        raise ValueError("ROI masks hold 0 (outside) or 1 (inside) only; got a value of " + str(rois.max()))
    ids = np.array(list(req.ids), dtype=str)
    s = engine.run(images, rois, want_cam=req.want_cam)
    ranked = scored_batch(ids, s.probs, s.entropy, s.dice, s.roi_area, config)
    resp = pb.ScoreStreamResponse(samples=ranked_to_proto(ranked))
    if req.want_cam and s.cam is not None:
        rows = kept(ids, criteria(s.probs, s.entropy, s.dice, s.roi_area, ids, config).keep)
        resp.cams = s.cam[rows].astype("<f4").tobytes()
        resp.cam_shape.extend(s.cam.shape[1:])
    return resp
