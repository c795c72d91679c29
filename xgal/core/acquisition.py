"""The acquisition function (DESIGN.md §2): uncertainty U, misalignment M, their combination.

Everything here is pointwise per sample unless a pool-level normalisation is asked for, so
shards of a pool can be scored apart and their rankings merged exactly.

    score = λ·U + (1 − λ)·M,    U = entropy (nats) by default,   M = 1 − Dice(CAM, ROI)

λ = 0.3 and raw criteria are the authors' choices (Uddin et al., 2026).

Selection is the top-k of the score, or a draw of k without replacement with probabilities
∝ exp(β·score) (`softmax`) or ∝ score^β (`power`): top-k pointwise scores alone pick
near-duplicates. The draw is Gumbel-top-k (the top-k of log-weight + Gumbel noise, Kool et al.,
2019), with noise that depends on (seed, ID) alone, so a pool's draw equals the merge of its
shards' draws and a seed reproduces it; the score reported is then that sampling key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from xgal.core.contract import CAM_EPS
from xgal.core.errors import InvalidArgument
from xgal.core.masks import roi_present


class Strategy(StrEnum):
    RANDOM = "random"
    UNCERTAINTY = "uncertainty"
    MISALIGNMENT = "misalignment"
    XGAL = "xgal"


class Uncertainty(StrEnum):
    ENTROPY = "entropy"
    MARGIN = "margin"
    LEAST_CONFIDENCE = "least_confidence"
    # Over the flipped views a graph exported with views > 1 scores (`view_probs`):
    MEAN_ENTROPY = "mean_entropy"  # H(mean p): the entropy of the views' mean prediction
    # BALD's formula (Houlsby et al., 2011) over test-time flips: how much the prediction
    # depends on a flip; training does not flip, so not a posterior's epistemic uncertainty.
    BALD = "bald"  # H(mean p) − mean H(p): the views' disagreement

    @property
    def needs_views(self) -> bool:
        return self in (Uncertainty.MEAN_ENTROPY, Uncertainty.BALD)


class MissingRoi(StrEnum):
    MAX = "max"  # M = 1: the authors' choice
    IGNORE = "ignore"  # the sample is scored on U alone
    EXCLUDE = "exclude"  # the sample is never selected


class FlatCam(StrEnum):
    """A sample whose Grad-CAM carries no evidence (a flat map: no location raises the class
    score) has no place the model looked, so Dice measures nothing: min–max scaling makes the
    map zeros and M = 1 whatever the ROI."""

    MAX = "max"  # M = 1, as the authors' code computes it
    IGNORE = "ignore"  # the sample is scored on U alone, as a sample without ROI under `ignore`


class RoiSource(StrEnum):
    """What the misalignment is measured against: the expert's ROI, a weak one computed from the
    image (the body: `xgal.pool.body`), or the one the graph's ROI head predicts (learned from the
    ROIs radiologists drew on labelled scans); everywhere, or only where the expert drew nothing."""

    EXPERT = "expert"
    BODY = "body"
    EXPERT_ELSE_BODY = "expert-else-body"
    LEARNED = "learned"
    EXPERT_ELSE_LEARNED = "expert-else-learned"

    @property
    def learned(self) -> bool:
        """The graph's learned ROI is used for some scans (the graph must have an ROI head)."""
        return self in (RoiSource.LEARNED, RoiSource.EXPERT_ELSE_LEARNED)

    def learned_rows(self, rois: np.ndarray) -> np.ndarray:
        """[N] bool: the scans of `rois` [N, H, W] measured against the learned ROI (all of them
        for `learned`, those the expert drew nothing on for `expert-else-learned`)."""
        if not self.learned:
            return np.zeros(len(rois), dtype=bool)
        if self is RoiSource.LEARNED:
            return np.ones(len(rois), dtype=bool)
        return ~roi_present(rois)

    @classmethod
    def _missing_(cls, value: object) -> RoiSource | None:
        # The wire spells enum values with underscores.
        if isinstance(value, str) and "_" in value:
            return cls.__members__.get(value.upper())
        return None


class Normalise(StrEnum):
    NONE = "none"
    MINMAX = "minmax"
    RANK = "rank"


class Selection(StrEnum):
    TOP = "top"  # the k highest scores
    SOFTMAX = "softmax"  # k drawn with probability ∝ exp(β·score), without replacement
    POWER = "power"  # k drawn with probability ∝ score^β, without replacement


class Diversity(StrEnum):
    """What picks the k from the best-scoring candidates, using the graph's pooled embedding.
    Both depend on the candidate set alone, so shards' candidates merge first, exactly."""

    NONE = "none"  # the top k
    SPREAD = "spread"  # greedy k-center: the best-ranked far from those already chosen
    TYPICAL = "typical"  # TypiClust: the densest candidate of each of k clusters (cold start)


class Balance(StrEnum):
    NONE = "none"
    PREDICTED = "predicted"  # k/K per predicted class
    ORACLE = "oracle"  # k/K per true label: simulations only, as the authors ran it


@dataclass(frozen=True)
class AcquisitionConfig:
    strategy: Strategy = Strategy.XGAL
    lam: float = 0.3
    uncertainty: Uncertainty = Uncertainty.ENTROPY
    entropy_over_log_k: bool = False
    missing_roi: MissingRoi = MissingRoi.MAX
    normalise: Normalise = Normalise.NONE
    balance: Balance = Balance.NONE
    seed: int = 0  # for the random strategy and stochastic selection
    # Added later: after `seed`, so that positional construction keeps its meaning.
    selection: Selection = Selection.TOP
    beta: float = 1.0  # the softmax's inverse temperature, or the power's exponent
    flat_cam: FlatCam = FlatCam.MAX
    roi: RoiSource = RoiSource.EXPERT
    diversity: Diversity = Diversity.NONE
    candidates: int = 0  # how many of the best the diversity step chooses among; 0 = its default

    def __post_init__(self) -> None:
        # Accept plain strings from CLIs and wire messages; reject unknown names clearly.
        for name, enum in (
            ("strategy", Strategy),
            ("uncertainty", Uncertainty),
            ("missing_roi", MissingRoi),
            ("flat_cam", FlatCam),
            ("roi", RoiSource),
            ("normalise", Normalise),
            ("balance", Balance),
            ("selection", Selection),
            ("diversity", Diversity),
        ):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum(value))
            except ValueError:
                choices = ", ".join(e.value for e in enum)
                raise InvalidArgument(f"{name} must be one of {choices}; got {value!r}") from None
        try:
            lam = float(self.lam)
        except (TypeError, ValueError):
            raise InvalidArgument(f"lam (λ) must be a number in [0, 1], got {self.lam!r}") from None
        if not 0.0 <= lam <= 1.0:  # NaN fails this too
            raise InvalidArgument(f"lam (λ) must be in [0, 1], got {self.lam}")
        object.__setattr__(self, "lam", lam)
        try:
            beta = float(self.beta)
        except (TypeError, ValueError):
            raise InvalidArgument(f"beta must be a positive number, got {self.beta!r}") from None
        if not 0.0 < beta < float("inf"):  # NaN fails this too
            raise InvalidArgument(f"beta must be positive and finite, got {self.beta}")
        object.__setattr__(self, "beta", beta)
        if not isinstance(self.seed, int | np.integer) or isinstance(self.seed, bool):
            raise InvalidArgument(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "entropy_over_log_k", bool(self.entropy_over_log_k))
        if not isinstance(self.candidates, int | np.integer) or isinstance(self.candidates, bool):
            raise InvalidArgument(f"candidates must be an integer, got {self.candidates!r}")
        if self.candidates < 0:
            raise InvalidArgument(f"candidates must be 0 (the default) or more, got {self.candidates}")
        object.__setattr__(self, "candidates", int(self.candidates))
        if self.diversity is not Diversity.NONE and not self.pointwise:
            raise InvalidArgument(
                f"diversity {self.diversity.value!r} cannot be combined with normalise "
                f"{self.normalise.value!r}: the step needs every candidate's embedding, which a "
                "pool-level normalisation would have to fetch for the whole pool"
            )
        if self.diversity is not Diversity.NONE and self.balance is not Balance.NONE:
            raise InvalidArgument(
                f"diversity {self.diversity.value!r} cannot be combined with balance "
                f"{self.balance.value!r}: choose one way of spreading the batch"
            )

    @property
    def pointwise(self) -> bool:
        """True when a sample's score does not depend on the rest of the pool."""
        return self.normalise is Normalise.NONE or self.strategy is Strategy.RANDOM

    @property
    def needs_embedding(self) -> bool:
        return self.diversity is not Diversity.NONE

    def candidate_count(self, k: int) -> int:
        """How many of the best rows the selection of `k` keeps before its diversity step: k
        without one; else `candidates`, by default 5·k to spread over and 20·k to cluster."""
        if self.diversity is Diversity.NONE:
            return k
        m = self.candidates or (5 * k if self.diversity is Diversity.SPREAD else 20 * k)
        if m < k:
            raise InvalidArgument(f"candidates ({m}) must be at least the number to select ({k})")
        return m


def authors_acquisition() -> AcquisitionConfig:
    """The authors' score as their code ran it: 0.3·entropy + 0.7·(1 − Dice), raw criteria, a
    sample without ROI at M = 1, the top k (Uddin et al., 2026; `xgal-raw` in the demo)."""
    return AcquisitionConfig(
        strategy=Strategy.XGAL,
        lam=0.3,
        uncertainty=Uncertainty.ENTROPY,
        entropy_over_log_k=False,
        missing_roi=MissingRoi.MAX,
        flat_cam=FlatCam.MAX,
        roi=RoiSource.EXPERT,
        normalise=Normalise.NONE,
        balance=Balance.NONE,
        selection=Selection.TOP,
    )


def uncertainty(
    probs: np.ndarray,
    entropy: np.ndarray,
    kind: Uncertainty,
    over_log_k: bool = False,
    view_probs: np.ndarray | None = None,
) -> np.ndarray:
    """Higher = less certain, for every kind. `view_probs` [N, V, K]: the views' probabilities,
    which `mean_entropy` and `bald` need."""
    kind = Uncertainty(kind)
    if kind.needs_views:
        if view_probs is None or view_probs.ndim != 3 or view_probs.shape[1] < 2:
            raise InvalidArgument(
                f"uncertainty {kind.value!r} needs the probabilities of several views of each image: "
                "export the scoring graph with views (xgal train does for this uncertainty)"
            )
        p = view_probs.astype(np.float64)
        mean = p.mean(1)
        h_mean = -(mean * np.log(np.clip(mean, 1e-12, None))).sum(1)
        if kind is Uncertainty.BALD:
            h_each = -(p * np.log(np.clip(p, 1e-12, None))).sum(2).mean(1)
            u = np.maximum(h_mean - h_each, 0.0)  # ≥ 0 by Jensen; clip rounding
        else:
            u = h_mean
        return u / np.log(probs.shape[1]) if over_log_k else u
    if kind is Uncertainty.ENTROPY:
        u = entropy.astype(np.float64)
        return u / np.log(probs.shape[1]) if over_log_k else u
    top2 = np.sort(probs, axis=1)[:, -2:].astype(np.float64)
    if kind is Uncertainty.MARGIN:
        return 1.0 - (top2[:, 1] - top2[:, 0])
    return 1.0 - top2[:, 1]


def misalignment(dice: np.ndarray) -> np.ndarray:
    return 1.0 - dice.astype(np.float64)


def random_scores(ids: np.ndarray, seed: int, salt: str = "") -> np.ndarray:
    """A uniform [0, 1) draw per ID that depends on (seed, ID) alone, so it is shard-invariant;
    another `salt` gives an independent draw."""
    out = np.empty(len(ids), dtype=np.float64)
    for i, sample_id in enumerate(ids):
        digest = hashlib.blake2b(f"{salt}{seed}:{sample_id}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


def gumbel_noise(ids: np.ndarray, seed: int) -> np.ndarray:
    """Standard Gumbel noise per ID, from (seed, ID) alone (independent of `random_scores`)."""
    u = random_scores(ids, seed, salt="gumbel:") + 2.0**-65  # in (0, 1): finite logs
    return -np.log(-np.log(u))


def sampling_key(score: np.ndarray, ids: np.ndarray, config: AcquisitionConfig) -> np.ndarray:
    """What the selection ranks by: the score for top-k, else log-weight + Gumbel noise, whose
    top-k is a draw of k without replacement with probabilities ∝ the weights."""
    if config.selection is Selection.TOP:
        return score
    if config.selection is Selection.SOFTMAX:
        log_weight = config.beta * score
    else:  # a weight of 0 (score 0) is never drawn while any other is left
        log_weight = config.beta * np.log(np.maximum(score, 1e-300))
    return log_weight + gumbel_noise(ids, config.seed)


def normalise(values: np.ndarray, method: Normalise) -> np.ndarray:
    """Pool-level rescaling to [0, 1] so that neither criterion dominates by spread alone."""
    method = Normalise(method)
    v = values.astype(np.float64)
    if method is Normalise.NONE or v.size == 0:
        return v
    if method is Normalise.MINMAX:
        span = v.max() - v.min()
        return (v - v.min()) / span if span > 0 else np.zeros_like(v)
    # Average ranks (ties share their mean rank), scaled to [0, 1].
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_v)) + 1]
    ends = np.r_[starts[1:], v.size]
    ranks = np.empty_like(v)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks / (v.size - 1) if v.size > 1 else np.zeros_like(v)


@dataclass
class Criteria:
    """Per-sample criteria and the final acquisition score. `keep` is False for samples the
    missing-ROI policy excludes; `flat` is True where the CAM carries no evidence."""

    u: np.ndarray
    m: np.ndarray
    score: np.ndarray
    has_roi: np.ndarray
    keep: np.ndarray
    flat: np.ndarray


def criteria(
    probs: np.ndarray,
    entropy: np.ndarray,
    dice: np.ndarray,
    roi_area: np.ndarray,
    ids: np.ndarray,
    config: AcquisitionConfig,
    cam_range: np.ndarray | None = None,
    view_probs: np.ndarray | None = None,
) -> Criteria:
    """U, M and the pointwise score of a batch. `cam_range` is each CAM's max − min (None: not
    measured, no map is taken as flat). With a pool-level normalisation the score is
    provisional: `ranking.rescore` recomputes it once every sample's criteria are known."""
    u = uncertainty(probs, entropy, config.uncertainty, config.entropy_over_log_k, view_probs)
    has_roi = roi_area > 0
    m = np.where(has_roi, misalignment(dice), 1.0)
    keep = has_roi | (config.missing_roi is not MissingRoi.EXCLUDE)
    flat = flat_maps(cam_range, len(u))
    score = combine(u, m, has_roi, ids, config, flat)
    return Criteria(u=u, m=m, score=score, has_roi=has_roi, keep=keep, flat=flat)


def flat_maps(cam_range: np.ndarray | None, n: int) -> np.ndarray:
    """Where a CAM carries no evidence: its range is within the scaling's epsilon, so min–max
    scaling cannot make a map of it."""
    if cam_range is None:
        return np.zeros(n, dtype=bool)
    return np.asarray(cam_range, dtype=np.float64) <= CAM_EPS


def combine(
    u: np.ndarray,
    m: np.ndarray,
    has_roi: np.ndarray,
    ids: np.ndarray,
    config: AcquisitionConfig,
    flat: np.ndarray | None = None,
) -> np.ndarray:
    """The strategy's score from U and M (normalised over the given samples if asked)."""
    if config.strategy is Strategy.RANDOM:
        return random_scores(ids, config.seed)
    u = normalise(u, config.normalise)
    m = normalise(m, config.normalise)
    if config.strategy is Strategy.UNCERTAINTY:
        score = u
    elif config.strategy is Strategy.MISALIGNMENT:
        score = m
    else:
        score = config.lam * u + (1.0 - config.lam) * m
    if config.missing_roi is MissingRoi.IGNORE:
        score = np.where(has_roi, score, u)
    if config.flat_cam is FlatCam.IGNORE and flat is not None:
        score = np.where(flat, u, score)
    return sampling_key(score, ids, config)
