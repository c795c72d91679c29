"""Conversions between the service's messages (xgal.v1) and the scorer's own types."""

from __future__ import annotations

import numpy as np

from xgal.scorer.acquisition import AcquisitionConfig
from xgal.scorer.ranking import Ranked
from xgal.scorer.repository import StoredModel
from xgal.v1 import scorer_pb2 as pb

_STRATEGY = {
    pb.STRATEGY_RANDOM: "random",
    pb.STRATEGY_UNCERTAINTY: "uncertainty",
    pb.STRATEGY_MISALIGNMENT: "misalignment",
    pb.STRATEGY_XGAL: "xgal",
    pb.STRATEGY_UNSPECIFIED: "xgal",
}
_UNCERTAINTY = {
    pb.UNCERTAINTY_ENTROPY: "entropy",
    pb.UNCERTAINTY_MARGIN: "margin",
    pb.UNCERTAINTY_LEAST_CONFIDENCE: "least_confidence",
    pb.UNCERTAINTY_UNSPECIFIED: "entropy",
}
_MISSING = {
    pb.MISSING_ROI_MAX: "max",
    pb.MISSING_ROI_IGNORE: "ignore",
    pb.MISSING_ROI_EXCLUDE: "exclude",
    pb.MISSING_ROI_UNSPECIFIED: "max",
}
_NORMALISE = {
    pb.NORMALISATION_NONE: "none",
    pb.NORMALISATION_MINMAX: "minmax",
    pb.NORMALISATION_RANK: "rank",
    pb.NORMALISATION_UNSPECIFIED: "none",
}
_BALANCE = {
    pb.BALANCE_NONE: "none",
    pb.BALANCE_PREDICTED: "predicted",
    pb.BALANCE_ORACLE: "oracle",
    pb.BALANCE_UNSPECIFIED: "none",
}


def _lookup(table: dict[int, str], value: int, what: str) -> str:
    try:
        return table[value]
    except KeyError:
        raise ValueError(f"unknown {what} value {value}") from None


def acquisition_from_proto(msg: pb.Acquisition) -> AcquisitionConfig:
    return AcquisitionConfig(
        strategy=_lookup(_STRATEGY, msg.strategy, "strategy"),
        lam=msg.lam if msg.HasField("lam") else 0.3,
        uncertainty=_lookup(_UNCERTAINTY, msg.uncertainty, "uncertainty"),
        entropy_over_log_k=msg.entropy_over_log_k,
        missing_roi=_lookup(_MISSING, msg.missing_roi, "missing_roi"),
        normalise=_lookup(_NORMALISE, msg.normalisation, "normalisation"),
        balance=_lookup(_BALANCE, msg.balance, "balance"),
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
