"""Conversions between the service's messages (xgal.v1) and the scorer's own types."""

from __future__ import annotations

import numpy as np

from xgal.scorer.acquisition import AcquisitionConfig
from xgal.scorer.ranking import Ranked
from xgal.scorer.repository import StoredModel
from xgal.v1 import scorer_pb2 as pb


def _name(enum: object, value: int, prefix: str, default: str) -> str:
    """Enum value -> AcquisitionConfig's name: STRATEGY_XGAL -> "xgal"; 0 (unset) -> default."""
    if value == 0:
        return default
    try:
        return enum.Name(value).removeprefix(prefix).lower()  # type: ignore[attr-defined]
    except ValueError:
        raise ValueError(f"unknown {prefix.rstrip('_').lower()} value {value}") from None


def acquisition_from_proto(msg: pb.Acquisition) -> AcquisitionConfig:
    return AcquisitionConfig(
        strategy=_name(pb.Strategy, msg.strategy, "STRATEGY_", "xgal"),
        lam=msg.lam if msg.HasField("lam") else 0.3,
        uncertainty=_name(pb.UncertaintyKind, msg.uncertainty, "UNCERTAINTY_", "entropy"),
        entropy_over_log_k=msg.entropy_over_log_k,
        missing_roi=_name(pb.MissingRoiPolicy, msg.missing_roi, "MISSING_ROI_", "max"),
        normalise=_name(pb.Normalisation, msg.normalisation, "NORMALISATION_", "none"),
        balance=_name(pb.Balance, msg.balance, "BALANCE_", "none"),
        seed=msg.seed,
    )


def model_info(stored: StoredModel, loaded: bool, providers: list[str] | None = None) -> pb.ModelInfo:
    i = stored.info
    return pb.ModelInfo(
        name=stored.name,
        version=stored.version,
        sha256=stored.sha256,
        class_names=list(i.class_names),
        input_shape=list(i.input_shape),
        pixel_dtype=i.pixel_dtype,
        target_layer=i.target_layer,
        head=i.head,
        round=i.round_index,
        loaded=loaded,
        providers=providers or [],
    )


def samples(r: Ranked) -> list[pb.ScoredSample]:
    has_roi = r.has_roi if r.has_roi is not None else np.ones(len(r), dtype=bool)
    group = r.group if r.group is not None else r.pred
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
        )
        for i in range(len(r))
    ]
