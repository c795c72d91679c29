"""One ScoreStream message: the client's pixels and ROIs checked, scored and ranked.

The client sends batches the server cannot read from disk; every byte is checked against the
model's input contract before it reaches the engine: the dtype the client says it sent (bytes
alone cannot tell float NaNs from pixels), the sizes, the IDs, and each sample
(`sample_problems`: ROI values, NaN/Inf in float pixels).
"""

from __future__ import annotations

import numpy as np

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.ranking import scored_batch
from xgal.core.samples import sample_problems
from xgal.core.wire import ranked_to_proto
from xgal.scorer.batcher import BatchedEngine
from xgal.scorer.roi_choice import score_against_roi
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
    dtype = _wire_dtype(req.pixel_dtype, engine.info.pixel_dtype)
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
    problems = sample_problems(rois, images)
    if problems:
        row, reason = problems[0]
        more = f" ({len(problems) - 1} more samples of this batch are bad too)" if len(problems) > 1 else ""
        raise ValueError(f"sample {req.ids[row][:80]!r}: {reason}{more}")
    ids = np.array(list(req.ids), dtype=str)
    s, roi_source = score_against_roi(
        engine, images, rois, config.roi, want_cam=req.want_cam, want_views=config.uncertainty.needs_views
    )
    ranked, rows = scored_batch(
        ids,
        s.probs,
        s.entropy,
        s.dice,
        s.roi_area,
        config,
        cam_range=s.cam_range,
        roi_source=roi_source,
        view_probs=s.view_probs,
    )
    resp = pb.ScoreStreamResponse(samples=ranked_to_proto(ranked))
    if req.want_cam and s.cam is not None:
        resp.cams = s.cam[rows].astype("<f4").tobytes()
        resp.cam_shape.extend(s.cam.shape[1:])
    return resp


def _wire_dtype(declared: str, model: str) -> np.dtype:
    """The little-endian dtype of the images sent, once `declared` (the message's pixel_dtype)
    is found to name the model's pixel dtype; a ValueError saying what the model takes if not."""
    want = np.dtype(model).newbyteorder("<")
    takes = f"the model takes {model} pixels (pixel_dtype {model!r}, little-endian)"
    if not declared:
        raise ValueError(f"the batch gives no pixel_dtype for its images; {takes}")
    # Compared as text, never parsed: np.dtype() reads far more than type names, and some of
    # what it reads crashes the process (NumPy 2.4: np.dtype("3T,").newbyteorder("<") is a
    # segfault). ">u2" is refused even for a uint16 model: the bytes are read little-endian.
    if declared not in {want.name, want.str, "<" + want.str[1:]}:
        raise ValueError(f"the batch's images are {declared[:32]!r}; {takes}")
    return want
