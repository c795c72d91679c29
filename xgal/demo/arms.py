"""The demo's arms (one active-learning run each, at equal budget), its budgets and the
synthetic pool's regime (how strong the shortcut is, how large the lesions are)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from xgal.core.acquisition import AcquisitionConfig, authors_acquisition
from xgal.core.errors import InvalidArgument
from xgal.loop.presets import XGAL_SELECTION


@dataclass(frozen=True)
class Arm:
    name: str
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    alpha: float = 0.1  # the Grad-CAM guidance loss's weight in training
    about: str = ""
    cold_start: str = "none"  # LoopConfig.cold_start
    roi_head: str = "none"  # LoopConfig.roi_head: the classifier learns the radiologist's ROIs


ALL_ARMS = (
    Arm("random", AcquisitionConfig(strategy="random"), about="uniform draws"),
    Arm("uncertainty", AcquisitionConfig(strategy="uncertainty"), about="entropy alone"),
    Arm(
        "xgal",
        XGAL_SELECTION.acquisition,
        cold_start=XGAL_SELECTION.cold_start,
        about="recommended: the authors' score, spread over the embedding, a TypiClust start",
    ),
    Arm(
        "xgal-learned",
        replace(XGAL_SELECTION.acquisition, roi="learned"),
        cold_start=XGAL_SELECTION.cold_start,
        roi_head="shared",
        about="xgal with M against the ROI the model's head predicts, learned from the ROIs returned "
        "for labelled scans; the scorer uses no pool ROI",
    ),
    Arm(
        "xgal-learned-detached",
        replace(XGAL_SELECTION.acquisition, roi="learned"),
        cold_start=XGAL_SELECTION.cold_start,
        roi_head="shared-detached",
        about="xgal-learned whose ROI head's loss stops at the trunk: the classifier trains as without it",
    ),
    Arm("xgal-raw", authors_acquisition(), about="the authors' raw 0.3·U + 0.7·M"),
    Arm("xgal-rank", AcquisitionConfig(normalise="rank"), about="U and M rank-normalised over the pool"),
    Arm("xgal-balanced", AcquisitionConfig(balance="predicted"), about="k/K per predicted class"),
    Arm(
        "xgal-power",
        AcquisitionConfig(selection="power", beta=1.0),
        about="k drawn ∝ the xgal score (Gumbel-top-k), not its top k",
    ),
    Arm(
        "xgal-body",
        replace(XGAL_SELECTION.acquisition, roi="body"),
        cold_start=XGAL_SELECTION.cold_start,
        about="xgal with M against the body found in each scan, the pool's expert ROIs withheld",
    ),
    Arm(
        "xgal-raw-body",
        AcquisitionConfig(roi="body"),
        about="xgal-raw with M against the body found in each scan, the expert ROIs withheld",
    ),
    Arm("xgal-alpha0", AcquisitionConfig(), alpha=0.0, about="xgal without the guidance loss"),
    Arm(
        "xgal-spread",
        AcquisitionConfig(diversity="spread"),
        about="the k chosen far apart in the embedding among the 5·k best xgal scores",
    ),
    Arm(
        "bald",
        AcquisitionConfig(strategy="uncertainty", uncertainty="bald"),
        about="BALD over four flipped views alone (the views' disagreement)",
    ),
    Arm("xgal-bald", AcquisitionConfig(uncertainty="bald"), about="xgal with BALD as U"),
    Arm(
        "xgal-typical",
        AcquisitionConfig(),
        cold_start="typical",
        about="xgal, its first round TypiClust representatives of the embedding (cold start)",
    ),
    Arm(
        "xgal-bald-typical",
        AcquisitionConfig(uncertainty="bald"),
        cold_start="typical",
        about="xgal-bald, its first round TypiClust representatives (cold start)",
    ),
)
# The default answers the demo's questions (does xgal beat random, and uncertainty alone, with
# the expert's pool ROIs as an oracle and with the ROIs a model learns from the labelled scans'
# alone, as a real pool needs) in under 10 minutes on 2 cores; `--arms` adds the others, which
# vary the authors' score (`xgal-raw`) one choice at a time.
ARMS = tuple(a for a in ALL_ARMS if a.name in ("random", "uncertainty", "xgal", "xgal-learned"))
QUICK_ARMS = tuple(a for a in ALL_ARMS if a.name in ("random", "uncertainty", "xgal"))


def pick_arms(names: list[str]) -> tuple[Arm, ...]:
    """The arms named, in the order given; an unknown name is an error that lists the known."""
    by_name = {a.name: a for a in ALL_ARMS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InvalidArgument(f"unknown arm(s) {unknown}; choose from {list(by_name)}")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"an arm is named twice in {names}")
    return tuple(by_name[n] for n in names)


@dataclass(frozen=True)
class DemoBudget:
    pool: int
    test: int
    initial: int
    per_round: int
    rounds: int
    epochs: int  # passes over the labelled set per round


# A test split of 1,000: at 300 the binomial noise of one accuracy alone was ±0.026.
FULL = DemoBudget(pool=3000, test=1000, initial=60, per_round=60, rounds=5, epochs=30)
QUICK = DemoBudget(pool=1000, test=150, initial=30, per_round=30, rounds=3, epochs=20)


@dataclass(frozen=True)
class Regime:
    """The synthetic pool's regime: the share of scans carrying the tag, how often the tag names
    the true class in the pool (1/K: no shortcut, the control), and the lesions' size."""

    tag_fraction: float = 0.7
    tag_agreement: float = 0.95
    lesion_scale: float = 1.0

    def describe(self, num_classes: int) -> str:
        if abs(self.tag_agreement - 1 / num_classes) < 1e-9:
            text = "no shortcut (tag independent of the class)"
        else:
            text = (
                f"tag on {self.tag_fraction:.0%} of scans, naming the class "
                f"{self.tag_agreement:.0%} of the time"
            )
        return text + ("" if self.lesion_scale == 1 else f", lesions ×{self.lesion_scale:g}")

    def folder(self, seed: int, default_shortcut: bool, num_classes: int) -> str:
        """The seed's data folder: `seed{N}` for the default regime (as before), else named."""
        if self == Regime():
            return f"seed{seed}"
        if self == Regime(tag_agreement=1 / num_classes):
            return f"seed{seed}-no-shortcut"
        return f"seed{seed}-f{self.tag_fraction:g}-a{self.tag_agreement:.3g}-l{self.lesion_scale:g}"


def parse_budget(text: str, base: DemoBudget) -> DemoBudget:
    """ "INITIAL+ROUNDSxPER" (e.g. 30+3x30) as a budget; pool, test split and epochs from `base`."""
    try:
        initial, rest = text.split("+")
        rounds, per_round = rest.lower().split("x")
        values = int(initial), int(rounds), int(per_round)
    except ValueError:
        raise InvalidArgument(f"--budget takes INITIAL+ROUNDSxPER, e.g. 30+3x30; got {text!r}") from None
    if min(values) < 1 or values[0] + values[1] * values[2] > base.pool // 2:
        raise InvalidArgument(f"--budget {text}: every number at least 1, and at most half the pool labelled")
    return replace(base, initial=values[0], rounds=values[1], per_round=values[2])
