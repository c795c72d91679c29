"""The mapping between the core's types and the service's messages (xgal.v1), both ways.

The server and the client both convert here, so an enum or a field is named in one place.
Enum values are named after the config's values ("least_confidence" <->
UNCERTAINTY_LEAST_CONFIDENCE), so no table is kept by hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import ScoringGraphInfo
from xgal.core.errors import InvalidArgument
from xgal.core.ranking import Ranked, ScoreResult
from xgal.core.samples import OnBadSample, SkippedSample
from xgal.v1 import scorer_pb2 as pb

# (config field, proto field, proto enum, value prefix); 0 (unset) means the config's default.
_ENUMS = (
    ("strategy", "strategy", pb.Strategy, "STRATEGY_"),
    ("uncertainty", "uncertainty", pb.UncertaintyKind, "UNCERTAINTY_"),
    ("missing_roi", "missing_roi", pb.MissingRoiPolicy, "MISSING_ROI_"),
    ("flat_cam", "flat_cam", pb.FlatCamPolicy, "FLAT_CAM_"),
    ("roi", "roi", pb.RoiSource, "ROI_"),
    ("normalise", "normalisation", pb.Normalisation, "NORMALISATION_"),
    ("balance", "balance", pb.Balance, "BALANCE_"),
    ("selection", "selection", pb.Selection, "SELECTION_"),
    ("diversity", "diversity", pb.Diversity, "DIVERSITY_"),
)


def acquisition_to_proto(config: AcquisitionConfig) -> pb.Acquisition:
    msg = pb.Acquisition(
        lam=config.lam,
        entropy_over_log_k=config.entropy_over_log_k,
        seed=config.seed,
        beta=config.beta,
        candidates=config.candidates,
    )
    for field, proto_field, enum, prefix in _ENUMS:
        setattr(msg, proto_field, enum.Value(prefix + getattr(config, field).value.upper().replace("-", "_")))
    return msg


def acquisition_from_proto(msg: pb.Acquisition) -> AcquisitionConfig:
    defaults = AcquisitionConfig()
    names: dict[str, object] = {}
    for field, proto_field, enum, prefix in _ENUMS:
        value = getattr(msg, proto_field)
        if value == 0:
            names[field] = getattr(defaults, field)
            continue
        try:
            names[field] = enum.Name(value).removeprefix(prefix).lower()
        except ValueError:
            raise InvalidArgument(f"unknown {proto_field} value {value}") from None
    return AcquisitionConfig(
        **names,  # type: ignore[arg-type]
        lam=msg.lam if msg.HasField("lam") else defaults.lam,
        beta=msg.beta if msg.HasField("beta") else defaults.beta,
        entropy_over_log_k=msg.entropy_over_log_k,
        seed=msg.seed,
        candidates=msg.candidates,
    )


_ON_BAD_SAMPLE = "ON_BAD_SAMPLE_"


def on_bad_sample_to_proto(policy: OnBadSample | str) -> int:
    return pb.OnBadSample.Value(_ON_BAD_SAMPLE + OnBadSample.parse(policy).value.upper())


def on_bad_sample_from_proto(value: int) -> OnBadSample:
    """0 (unset) is FAIL, the default: a request that does not ask to skip never loses a sample."""
    if value == 0:
        return OnBadSample.FAIL
    try:
        return OnBadSample(pb.OnBadSample.Name(value).removeprefix(_ON_BAD_SAMPLE).lower())
    except ValueError:
        raise InvalidArgument(f"unknown on_bad_sample value {value}") from None


def skipped_to_proto(skipped: Sequence[SkippedSample]) -> list[pb.SkippedSample]:
    return [pb.SkippedSample(id=s.id, reason=s.reason) for s in skipped]


def skipped_from_proto(skipped: Sequence[pb.SkippedSample]) -> list[SkippedSample]:
    return [SkippedSample(s.id, s.reason) for s in skipped]


# The bytes a ScorePool reply message may hold unless the server is told otherwise: far below
# gRPC's usual 64 MiB limit, so that a pool's every row goes in many small messages, never one
# too large for a client to take.
REPLY_MESSAGE_BYTES = 4 << 20


def score_pool_replies(
    result: ScoreResult, model: pb.ModelInfo, max_bytes: int = REPLY_MESSAGE_BYTES
) -> Iterator[pb.ScorePoolResponse]:
    """ScorePool's last messages: the result's rows (top, all, skipped, in order) packed into
    ScoreRows of at most `max_bytes` each (one row at least), then the result with the rows
    left and its totals. A reply that fits one message is that one result."""
    final = pb.ScoreResult(
        model=model,
        scored=result.scored,
        excluded=result.excluded,
        seconds=result.seconds,
        with_roi=result.with_roi,
    )
    rows = {
        "top": ranked_to_proto(result.top),
        "all": ranked_to_proto(result.all, embeddings=False) if result.all is not None else [],
        "skipped": skipped_to_proto(result.skipped),
    }
    # Room for rows in a message: the totals go in the last one, and each row costs its bytes
    # plus its field tag and length (at most 6 bytes: rows are far below 2^28 bytes).
    room = max_bytes - pb.ScorePoolResponse(result=final).ByteSize() - 16
    part: dict[str, list] = {name: [] for name in rows}
    used = 0
    for name, items in rows.items():
        for item in items:
            size = item.ByteSize() + 6
            if used and used + size > room:
                yield pb.ScorePoolResponse(rows=pb.ScoreRows(**part))
                part, used = {k: [] for k in rows}, 0
            part[name].append(item)
            used += size
    final.top.extend(part["top"])
    final.all.extend(part["all"])
    final.skipped.extend(part["skipped"])
    yield pb.ScorePoolResponse(result=final)


def join_score_rows(parts: Sequence[pb.ScoreRows], result: pb.ScoreResult) -> pb.ScoreResult:
    """The whole ScorePool result: each list's rows from `parts`, in the order received, then
    the result's own (score_pool_replies' inverse)."""
    if not parts:
        return result
    whole = pb.ScoreResult()
    for p in parts:
        whole.top.extend(p.top)
        whole.all.extend(p.all)
        whole.skipped.extend(p.skipped)
    whole.MergeFrom(result)  # its rows appended, its model and totals set
    return whole


def model_info_to_proto(
    name: str,
    version: int,
    sha256: str,
    info: ScoringGraphInfo,
    *,
    loaded: bool,
    providers: Sequence[str] = (),
) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=name,
        version=version,
        sha256=sha256,
        class_names=list(info.class_names),
        input_shape=list(info.input_shape),
        pixel_dtype=info.pixel_dtype,
        target_layer=info.target_layer,
        head=info.head,
        round=info.round_index,
        loaded=loaded,
        providers=list(providers),
        precision=info.precision,
        graph_sha256=info.graph_sha256,
    )


def ranked_to_proto(r: Ranked, embeddings: bool = True) -> list[pb.ScoredSample]:
    """`embeddings=False` leaves them out (every sample's scores: only candidates need them)."""
    has_roi = r.has_roi if r.has_roi is not None else np.ones(len(r), dtype=bool)
    group = r.group if r.group is not None else r.pred
    flat = r.flat if r.flat is not None else np.zeros(len(r), dtype=bool)
    source = r.roi_source if r.roi_source is not None else has_roi.astype(np.uint8)
    emb = r.embedding if embeddings and r.embedding is not None and r.embedding.shape[1] else None
    return [
        pb.ScoredSample(
            id=str(r.ids[i]),
            uncertainty=float(r.u[i]),
            misalignment=float(r.m[i]),
            score=float(r.score[i]),
            predicted=int(r.pred[i]),
            probs=r.probs[i].tolist(),
            has_roi=bool(has_roi[i]),
            group=int(group[i]),
            flat_cam=bool(flat[i]),
            roi_source=int(source[i]),
            embedding=emb[i].tolist() if emb is not None else (),
        )
        for i in range(len(r))
    ]


def ranked_from_proto(samples: Sequence[pb.ScoredSample], num_classes: int) -> Ranked:
    n = len(samples)
    if n == 0:
        return Ranked.empty(num_classes)
    return Ranked(
        ids=np.array([s.id for s in samples], dtype=str),
        u=np.array([s.uncertainty for s in samples]),
        m=np.array([s.misalignment for s in samples]),
        score=np.array([s.score for s in samples]),
        pred=np.array([s.predicted for s in samples], dtype=np.int64),
        probs=np.array([list(s.probs) for s in samples], dtype=np.float32).reshape(n, num_classes),
        group=np.array([s.group for s in samples], dtype=np.int64),
        has_roi=np.array([s.has_roi for s in samples], dtype=bool),
        flat=np.array([s.flat_cam for s in samples], dtype=bool),
        roi_source=np.array([s.roi_source for s in samples], dtype=np.uint8),
        embedding=_embeddings(samples),
    )


def _embeddings(samples: Sequence[pb.ScoredSample]) -> np.ndarray:
    widths = {len(s.embedding) for s in samples}
    if len(widths) > 1:
        raise InvalidArgument(f"scored samples carry embeddings of different widths {sorted(widths)}")
    rows = np.array([list(s.embedding) for s in samples], dtype=np.float32)
    return rows.reshape(len(samples), widths.pop())
