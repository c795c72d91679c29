"""The active-learning loop: train -> export -> publish -> ScorePool -> annotate -> repeat.

Every round is written to `out_dir` as it finishes (state.json, the annotations received so
far, the model), so a stopped run continues from its last finished round and an annotator is
never asked twice for the same samples.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import PIXEL_SCALE
from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.trainer.annotator import Annotator
from xgal.trainer.export import ScoringGraphExporter
from xgal.trainer.nets import build_model, default_target_layer
from xgal.trainer.nets.classifier import Classifier
from xgal.trainer.train import TrainConfig, evaluate, to_input, train_classifier

_FLAT_ACQUISITION = ("strategy", "lam", "uncertainty", "normalise", "missing_roi", "balance")


@dataclass(frozen=True)
class LoopConfig:
    arch: str = "small_cnn"
    head: str = "linear"
    target_layer: str | None = None  # None = the network's default
    initial: int = 60
    per_round: int = 60
    rounds: int = 5  # acquisition rounds; the model is evaluated rounds + 1 times
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    reset_each_round: bool = False
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # A run has one seed: the acquisition's is the run's, so that two configurations that
        # select alike compare equal (resuming checks that). Each round draws with
        # `seed * 1000 + round`.
        if self.acquisition.seed != self.seed:
            object.__setattr__(self, "acquisition", replace(self.acquisition, seed=self.seed))

    @property
    def layer(self) -> str:
        return self.target_layer or default_target_layer(self.arch)

    def round_acquisition(self, r: int) -> AcquisitionConfig:
        """What round `r` asks the scorers for: a fresh random draw each round."""
        return replace(self.acquisition, seed=self.seed * 1000 + r)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoopConfig:
        known = {f.name for f in fields(cls)}
        # state.json written before `acquisition` was one field holds these keys flat.
        flat = {k: d[k] for k in _FLAT_ACQUISITION if k in d}
        d = {k: v for k, v in d.items() if k in known}
        d["acquisition"] = AcquisitionConfig(**{**flat, **d.get("acquisition", {})})
        d["train"] = TrainConfig(**d.get("train", {}))
        for key in ("mean", "std"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class RoundRecord:
    round: int
    labelled: int
    accuracy: float
    macro_f1: float
    cam_dice: float
    train_loss: float
    model_version: int = 0
    selected: list[str] = field(default_factory=list)
    seconds: float = 0.0


def initial_selection(pool: Pool, n: int, seed: int) -> list[str]:
    """Stratified by label when the pool is a simulation (the authors' setup; only the choice
    uses the labels, training gets them from the annotator), else uniformly at random."""
    rng = np.random.default_rng(seed)
    ids = pool.ids()
    if n > len(ids):
        raise InvalidArgument(f"initial set of {n} is larger than the pool ({len(ids)})")
    if not pool.has_labels:
        return sorted(ids[rng.permutation(len(ids))[:n]].tolist())
    labels = pool.labels()
    classes = np.unique(labels)
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per, strict=True)]
    return sorted(ids[np.concatenate(picks)].tolist())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ActiveLearningLoop:
    def __init__(
        self,
        config: LoopConfig,
        pool: Pool,
        test_pool: Pool,
        client: ScorerClient,
        annotator: Annotator,
        out_dir: str | os.PathLike[str],
        *,
        pool_ref: str | None = None,
        model_name: str = "xgal",
        log: Callable[[RoundRecord, Classifier], None] | None = None,
        exporter: ScoringGraphExporter | None = None,
    ) -> None:
        """`pool_ref` is the pool's path as the scorers see it (under their data root);
        default: the pool folder's name. `exporter`: one to share between runs of the same
        network (it traces once); by default the run makes its own."""
        if not test_pool.has_labels:
            raise InvalidArgument(f"the test pool {test_pool.path} needs labels to measure accuracy")
        if tuple(test_pool.image_shape) != tuple(pool.image_shape):
            raise InvalidArgument(
                f"pool and test pool hold images of different shapes ({list(pool.image_shape)} and "
                f"{list(test_pool.image_shape)})"
            )
        self.config, self.pool, self.test_pool = config, pool, test_pool
        self.client, self.annotator = client, annotator
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.pool_ref = pool_ref or pool.path.name
        self.model_name = model_name
        self.log = log
        self.scale = PIXEL_SCALE[pool.pixel_dtype]
        self.class_names = pool.class_names or test_pool.class_names
        self.num_classes = len(self.class_names)
        self.index = {sample_id: i for i, sample_id in enumerate(pool.ids().tolist())}
        test = test_pool.read(0, test_pool.count, ("images", "labels", "rois"))
        self.test_x = to_input(test["images"], self.scale, config.mean, config.std)
        self.test_y = torch.from_numpy(test["labels"])
        self.test_roi = torch.from_numpy(test["rois"])
        # The first round traces the network, later rounds only swap the weights.
        own = ScoringGraphExporter(
            config.layer,
            image_shape=pool.image_shape,
            pixel_dtype=pool.pixel_dtype,
            mean=config.mean,
            std=config.std,
            class_names=self.class_names,
        )
        if exporter is not None and exporter.settings != own.settings:
            raise ValueError(
                f"the shared exporter is set up for {exporter.settings}, this run needs {own.settings}"
            )
        self.exporter = exporter or own

    # -- persistence ----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out / "state.json"

    def _load_state(self) -> tuple[list[RoundRecord], list[str], np.ndarray, np.ndarray, Classifier | None]:
        if not self.state_path.is_file():
            return [], [], np.zeros(0, np.int64), np.zeros((0, *self.pool.image_shape[1:]), np.uint8), None
        state = json.loads(self.state_path.read_text())
        saved = LoopConfig.from_dict(state["config"])
        if saved != self.config:
            raise InvalidArgument(
                f"{self.out} holds a run with a different configuration; choose another output folder "
                "or delete it to start over"
            )
        ann = np.load(self.out / "annotations.npz", allow_pickle=False)
        model = self._new_model()
        model.load_state_dict(torch.load(self.out / "model.pt", weights_only=True, map_location="cpu"))
        records = [RoundRecord(**r) for r in state["rounds"]]
        return records, ann["ids"].tolist(), ann["labels"], ann["rois"], model

    def _save(
        self,
        records: list[RoundRecord],
        ids: list[str],
        labels: np.ndarray,
        rois: np.ndarray,
        model: Classifier,
    ) -> None:
        buf = io.BytesIO()
        np.savez(buf, ids=np.array(ids, dtype=str), labels=labels, rois=rois)
        _atomic_write(self.out / "annotations.npz", buf.getvalue())
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        _atomic_write(self.out / "model.pt", buf.getvalue())
        state = {
            "config": self.config.to_dict(),
            "rounds": [asdict(r) for r in records],
            "class_names": list(self.class_names),
        }
        # Written last: a round counts as finished only once its state says so.
        _atomic_write(self.state_path, json.dumps(state, indent=1).encode())

    def _new_model(self) -> Classifier:
        torch.manual_seed(self.config.seed)
        return build_model(
            self.config.arch, self.config.head, self.num_classes, in_channels=self.pool.image_shape[0]
        )

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> list[RoundRecord]:
        cfg = self.config
        records, ids, labels, rois, model = self._load_state()
        if model is None:
            ids = initial_selection(self.pool, cfg.initial, cfg.seed)
            labels, rois = self.annotator.annotate(ids)
            model = self._new_model()
        for r in range(len(records), cfg.rounds + 1):
            t0 = time.perf_counter()
            if cfg.reset_each_round:
                model = self._new_model()
            images = self.pool.take([self.index[i] for i in ids], ("images",))["images"]
            x = to_input(images, self.scale, cfg.mean, cfg.std)
            history = train_classifier(
                model,
                x,
                torch.from_numpy(labels),
                replace(cfg.train, seed=cfg.seed * 1000 + r),
                roi=torch.from_numpy(rois),
                target_layer=cfg.layer,
            )
            metrics = evaluate(model, cfg.layer, self.test_x, self.test_y, self.test_roi)
            record = RoundRecord(round=r, labelled=len(ids), train_loss=history[-1]["loss"], **metrics)
            if r < cfg.rounds:
                selected, version = self._acquire(model, r, ids)
                record.selected, record.model_version = selected, version
                new_labels, new_rois = self.annotator.annotate(selected)
                ids = ids + selected
                labels = np.concatenate([labels, new_labels])
                rois = np.concatenate([rois, new_rois])
            record.seconds = time.perf_counter() - t0
            records.append(record)
            self._save(records, ids, labels, rois, model)
            if self.log is not None:
                self.log(record, model)
        return records

    def _acquire(self, model: Classifier, r: int, labelled: list[str]) -> tuple[list[str], int]:
        cfg = self.config
        path = self.exporter.export(model, self.out / "model.onnx", round_index=r)
        info = self.client.publish_model(path, self.model_name)
        result = self.client.score_pool(
            self.pool_ref,
            model=self.model_name,
            version=info.version,
            top_k=cfg.per_round,
            exclude_ids=labelled,
            progress=False,
            **asdict(cfg.round_acquisition(r)),
        )
        return result.top.ids.tolist(), int(info.version)
