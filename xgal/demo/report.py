"""What the demo concludes from its runs: each arm's final round and area under the learning
curve, and the paired per-seed differences between arms (every arm of a seed shares its pool,
test split and initial set, so a difference per seed removes what the seed alone decides).

A spread is reported only when there is one: with one seed the differences are single numbers,
and the verdict says so instead of printing "± 0.000".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from xgal.loop import RoundRecord

METRICS = ("accuracy", "cam_dice")
# Each arm's figures, in the order the tables show them: the last round and the curve's mean.
FIGURES = tuple(f"{kind}_{m}" for m in METRICS for kind in ("final", "auc"))
# (a, b): "a - b" is reported when both arms ran. The first two answer the demo's questions.
PAIRS = (
    ("xgal", "random"),
    ("xgal", "uncertainty"),
    ("uncertainty", "random"),
    ("xgal", "xgal-raw"),
    ("xgal-raw", "random"),
    ("xgal-raw", "uncertainty"),
    ("xgal", "xgal-alpha0"),
    ("xgal-body", "uncertainty"),
    ("xgal-balanced", "xgal"),
)
SIGNIFICANT_STD = 2.0  # a paired difference counts when its mean is at least this many std away from 0

Results = Mapping[int, Mapping[str, Sequence[RoundRecord]]]  # seed -> arm -> rounds


@dataclass(frozen=True)
class Stat:
    """A figure over seeds: the mean, the sample std (None for one seed) and each seed's value."""

    mean: float
    std: float | None
    per_seed: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        v = np.asarray(values, dtype=np.float64)
        return cls(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None, tuple(float(x) for x in v))

    def text(self, signed: bool = False) -> str:
        mean = f"{self.mean:+.3f}" if signed else f"{self.mean:.3f}"
        return mean if self.std is None else f"{mean} ± {self.std:.3f}"

    def verdict(self) -> str:
        """For a paired difference: does it stand out from the seed-to-seed noise?"""
        if self.std is None:
            return "one seed: no spread to judge by"
        if self.std == 0.0:
            return "no spread" if self.mean == 0 else ("better" if self.mean > 0 else "worse")
        z = self.mean / self.std
        if z >= SIGNIFICANT_STD:
            return f"better ({z:.1f} std)"
        if z <= -SIGNIFICANT_STD:
            return f"worse ({-z:.1f} std)"
        return f"within noise ({z:+.1f} std)"


def curve_auc(records: Sequence[RoundRecord], metric: str) -> float:
    """The metric's mean over the learning curve: the trapezoid area under it against labelled
    count, divided by the labelled span (one round: its value)."""
    x = np.array([r.labelled for r in records], dtype=np.float64)
    y = np.array([getattr(r, metric) for r in records], dtype=np.float64)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def _figures(records: Sequence[RoundRecord]) -> dict[str, float]:
    """One arm's FIGURES in one seed."""
    out = {}
    for m in METRICS:
        out[f"final_{m}"] = float(getattr(records[-1], m))
        out[f"auc_{m}"] = curve_auc(records, m)
    return out


def summarise(results: Results) -> dict:
    """{"seeds", "arms": {arm: {figure: Stat}}, "differences": {"a - b": {figure: Stat}}}, as
    plain dicts (JSON-ready)."""
    seeds = list(results)
    arms = list(next(iter(results.values())))
    figures = {a: [_figures(results[s][a]) for s in seeds] for a in arms}
    out: dict = {"seeds": seeds, "arms": {}, "differences": {}}
    for a in arms:
        out["arms"][a] = {
            "labelled": results[seeds[0]][a][-1].labelled,
            **{k: asdict(Stat.of([f[k] for f in figures[a]])) for k in figures[a][0]},
        }
    for a, b in PAIRS:
        if a in figures and b in figures:
            out["differences"][f"{a} - {b}"] = {
                k: asdict(Stat.of([fa[k] - fb[k] for fa, fb in zip(figures[a], figures[b], strict=True)]))
                for k in figures[a][0]
            }
    return out


def stat(d: Mapping) -> Stat:
    return Stat(d["mean"], d["std"], tuple(d["per_seed"]))
