"""What the demo concludes from its runs: each arm's final round and area under the learning
curve, and the paired per-seed differences between arms (every arm of a seed shares its pool,
test split and initial set, so a difference per seed removes what the seed alone decides).

A difference is judged by its paired 95% t-interval over seeds (n − 1 degrees of freedom):
"better" when the interval lies above 0, "worse" when below; otherwise "no loss" when its lower
end is above −`NO_LOSS`, else "inconclusive" (docs/evidence.md's definitions). With one seed
there is no interval, and the verdict says so instead of printing "± 0.000".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from xgal.loop import RoundRecord

METRICS = ("accuracy", "cam_dice")
# Each arm's figures, in the order the tables show them: the last round and the curve's mean.
FIGURES = tuple(f"{kind}_{m}" for m in METRICS for kind in ("final", "auc"))
# (a, b): "a - b" is reported when both arms ran. The first two answer the demo's questions.
PAIRS = (
    ("xgal", "random"),
    ("xgal", "uncertainty"),
    ("xgal-learned", "uncertainty"),
    ("xgal-learned", "random"),
    ("xgal-learned", "xgal"),
    ("uncertainty", "random"),
    ("xgal", "xgal-raw"),
    ("xgal-raw", "random"),
    ("xgal-raw", "uncertainty"),
    ("xgal", "xgal-alpha0"),
    ("xgal-body", "uncertainty"),
    ("xgal-balanced", "xgal"),
)
CONFIDENCE = 0.95  # the paired t-interval's coverage
NO_LOSS = 0.02  # "not worse": the interval's lower end above -0.02 (accuracy or Dice)

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

    @property
    def n(self) -> int:
        return len(self.per_seed)

    def interval(self) -> tuple[float, float] | None:
        """The paired 95% t-interval of the mean over seeds; None for one seed."""
        if self.std is None:
            return None
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, self.n - 1)) * self.std / np.sqrt(self.n)
        return self.mean - half, self.mean + half

    def text(self, signed: bool = False) -> str:
        mean = f"{self.mean:+.3f}" if signed else f"{self.mean:.3f}"
        return mean if self.std is None else f"{mean} ± {self.std:.3f}"

    def interval_text(self) -> str:
        ci = self.interval()
        return "" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"

    def verdict(self) -> str:
        """For a paired difference: "better" or "worse" when the 95% t-interval excludes 0;
        else "no loss" when its lower end is above -NO_LOSS, and "inconclusive" when it is not."""
        ci = self.interval()
        if ci is None:
            return "one seed: no interval"
        lo, hi = ci
        if lo > 0:
            return "better"
        if hi < 0:
            return "worse"
        return "no loss" if lo > -NO_LOSS else "inconclusive"


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
