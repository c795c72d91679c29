"""The active-learning loop's configuration: what a run is, as state.json records it (a run
folder belongs to one configuration; resuming with another is refused)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from xgal.core.acquisition import AcquisitionConfig, Balance, Diversity, Selection, Strategy
from xgal.core.contract import MAX_VIEWS, ROI_HEADS
from xgal.core.errors import InvalidArgument
from xgal.loop.labelled import INITIAL_BALANCES
from xgal.train.fit import TrainConfig
from xgal.train.nets import default_target_layer

COLD_STARTS = ("none", "typical")


@dataclass(frozen=True)
class LoopConfig:
    arch: str = "small_cnn"
    head: str = "linear"
    # ROI_HEADS other than "none": the classifier learns where the radiologists draw (train/nets/roi_head.py)
    # and the scoring graph exports it, for --roi learned | expert-else-learned.
    roi_head: str = "none"
    target_layer: str | None = None  # None = the network's default
    cam_method: str = "gradcam"  # the map the scoring graph ranks by (CAM_METHODS)
    initial: int = 60
    per_round: int = 60
    rounds: int = 5  # acquisition rounds; the model is evaluated rounds + 1 times
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    reset_each_round: bool = False
    seed: int = 0
    # "typical": the first acquisition (from a model trained on the initial set alone, often
    # worse than random) picks TypiClust representatives among a random sample of the pool
    # (20·k candidates), clustered on the embedding of the model trained on the initial set.
    cold_start: str = "none"
    # The initial set the user chose (IDs of the pool), instead of `initial` drawn at random.
    initial_ids: tuple[str, ...] = ()
    # How `initial` is drawn: "none", at random without reading a label; "oracle", stratified by
    # the pool's true labels (the authors' start: a simulation only).
    initial_balance: str = "none"
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # A run has one seed: the acquisition's is the run's, so that two configurations that
        # select alike compare equal (resuming checks that). Each round draws with
        # `seed * 1000 + round`.
        if self.acquisition.seed != self.seed:
            object.__setattr__(self, "acquisition", replace(self.acquisition, seed=self.seed))
        object.__setattr__(self, "initial_ids", tuple(str(i) for i in self.initial_ids))
        if self.initial_ids:
            if len(set(self.initial_ids)) != len(self.initial_ids):
                raise InvalidArgument("the initial IDs name a scan twice")
            object.__setattr__(self, "initial", len(self.initial_ids))
        if self.initial_balance not in INITIAL_BALANCES:
            raise InvalidArgument(
                f"initial_balance must be one of {INITIAL_BALANCES}, got {self.initial_balance!r}"
            )
        if self.roi_head not in ROI_HEADS:
            raise InvalidArgument(f"roi_head must be one of {ROI_HEADS}, got {self.roi_head!r}")
        if self.acquisition.roi.learned and self.roi_head == "none":
            raise InvalidArgument(
                f"--roi {self.acquisition.roi.value} measures misalignment against a learned ROI: "
                f"give the classifier an ROI head (--roi-head {' | '.join(ROI_HEADS[1:])})"
            )
        if self.cold_start not in COLD_STARTS:
            raise InvalidArgument(f"cold_start must be one of {COLD_STARTS}, got {self.cold_start!r}")

    @property
    def views(self) -> int:
        """Views the scoring graph scores: all of them for an uncertainty over views."""
        return MAX_VIEWS if self.acquisition.uncertainty.needs_views else 1

    @property
    def layer(self) -> str:
        return self.target_layer or default_target_layer(self.arch)

    def cold(self, r: int) -> bool:
        """Whether round `r`'s selection is the cold start (round 0's, with `typical`)."""
        return r == 0 and self.cold_start == "typical"

    def round_acquisition(self, r: int) -> AcquisitionConfig:
        """What round `r` asks the scorers for: a fresh random draw each round."""
        acquisition = replace(self.acquisition, seed=self.seed * 1000 + r)
        if self.cold(r):
            # Candidates drawn at random (pointwise, so shards merge), then clustered.
            acquisition = replace(
                acquisition,
                strategy=Strategy.RANDOM,
                diversity=Diversity.TYPICAL,
                selection=Selection.TOP,
                balance=Balance.NONE,
            )
        return acquisition

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoopConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise InvalidArgument(f"a run configuration with settings xgal does not know: {unknown}")
        d = dict(d)
        d["acquisition"] = AcquisitionConfig(**d.get("acquisition", {}))
        d["train"] = TrainConfig(**d.get("train", {}))
        for key in ("mean", "std", "initial_ids"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)
