"""The active-learning loop: train -> export -> publish -> ScorePool -> annotate -> repeat.

Every round is written to `out_dir` as it finishes (state.json, the annotations received so
far, the model), and within a round each stage's result as it is made (the trained model, the
selection, the annotator's answers; see `run_state`). A run killed at any point continues from
where it stopped: a finished round is never done again, a trained model is not trained again,
a selection already made is the one sent (again, if it was never answered), and an answer
received is never asked for again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from xgal.annotate.annotator import AnnotationRequest, Annotator, PendingRequest
from xgal.client import ScorerClient
from xgal.core.checksum import sha256_file
from xgal.core.contract import PIXEL_SCALE
from xgal.core.errors import InvalidArgument
from xgal.core.ranking import rows
from xgal.export import ScoringGraphExporter
from xgal.loop.config import LoopConfig
from xgal.loop.labelled import answered_part, initial_selection
from xgal.loop.request import chosen_by, hint_rois, model_view
from xgal.loop.run_state import RunFolder
from xgal.pool.format import MANIFEST, Pool
from xgal.train.fit import evaluate, to_input, train_classifier
from xgal.train.nets import build_model
from xgal.train.nets.classifier import Classifier

# What `on_stage(round, stage)` reports, in order. "initial": the initial set goes to the
# annotator (round 0, once per run); "recording": the round's answers are on disk and the round
# is being written. The last round (no acquisition) is "training", "export", "publish", "recording".
STAGES = ("initial", "training", "export", "publish", "scoring", "annotation", "recording")


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
    note: str = ""  # what the scoring said of its own ranking (e.g. M could not count)
    answered: int = -1  # of `selected`, how many were answered (-1: all of them)
    # The learned ROI's Dice against the expert's on the test split (NaN: no ROI head, no test).
    roi_dice: float = float("nan")


class ActiveLearningLoop:
    def __init__(
        self,
        config: LoopConfig,
        pool: Pool,
        test_pool: Pool | None,
        client: ScorerClient,
        annotator: Annotator,
        out_dir: str | os.PathLike[str],
        *,
        pool_ref: str | None = None,
        model_name: str = "xgal",
        log: Callable[[RoundRecord, Classifier], None] | None = None,
        exporter: ScoringGraphExporter | None = None,
        on_stage: Callable[[int, str], None] | None = None,
        on_trained: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        """`pool_ref` is the pool's path as the scorers see it (under their data root);
        default: the pool folder's name. `exporter`: one to share between runs of the same
        network (it traces once); by default the run makes its own. `log` gets each round once
        it is recorded; `on_stage(round, stage)` as each of `STAGES` begins, once what came
        before it is on disk (a resumed round reports only the stages it still has to do);
        `on_trained` gets each round's metrics as soon as its model is trained and evaluated
        (with the folder hand-off, long before the round is recorded).
        Without a `test_pool` the rounds are not evaluated (their metrics are NaN)."""
        if test_pool is not None and not test_pool.has_labels:
            raise InvalidArgument(f"the test pool {test_pool.path} needs labels to measure accuracy")
        if test_pool is not None and tuple(test_pool.image_shape) != tuple(pool.image_shape):
            raise InvalidArgument(
                f"pool and test pool hold images of different shapes ({list(pool.image_shape)} and "
                f"{list(test_pool.image_shape)})"
            )
        self.config, self.pool, self.test_pool = config, pool, test_pool
        self.client, self.annotator = client, annotator
        self.out = Path(out_dir)
        self.folder = RunFolder(self.out)
        self.pool_ref = pool_ref or pool.path.name
        self.model_name = model_name
        self.log, self.on_stage, self.on_trained = log, on_stage, on_trained
        self.scale = PIXEL_SCALE[pool.pixel_dtype]
        self.class_names = pool.class_names or (test_pool.class_names if test_pool is not None else [])
        if len(self.class_names) < 2:
            raise InvalidArgument(
                f"{pool.path} names no classes to learn (at least 2): import it with --classes, or give "
                "a labelled test pool"
            )
        self.num_classes = len(self.class_names)
        self.index = {sample_id: i for i, sample_id in enumerate(pool.ids().tolist())}
        self.pool_sha256 = sha256_file(pool.path / MANIFEST)
        self.test: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if test_pool is not None:
            test = test_pool.read(0, test_pool.count, ("images", "labels", "rois"))
            x = to_input(test["images"], self.scale, config.mean, config.std)
            labels = labels_by_name(test["labels"], list(test_pool.class_names), list(self.class_names))
            self.test = (x, torch.from_numpy(labels), torch.from_numpy(test["rois"]))
        # The first round traces the network, later rounds only swap the weights.
        own = ScoringGraphExporter(
            config.layer,
            image_shape=pool.image_shape,
            pixel_dtype=pool.pixel_dtype,
            mean=config.mean,
            std=config.std,
            class_names=self.class_names,
            cam_method=config.cam_method,
            views=config.views,
        )
        if exporter is not None and exporter.settings != own.settings:
            raise ValueError(
                f"the shared exporter is set up for {exporter.settings}, this run needs {own.settings}"
            )
        self.exporter = exporter or own

    # -- persistence ----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.folder.state_path

    def _state(self, records: list[RoundRecord]) -> dict:
        return {
            "config": self.config.to_dict(),
            # The pool the run selects from: its manifest's hash says it is the same pool even
            # where its folder moved; another pool would be indexed by the wrong scans.
            "pool": {"path": str(self.pool.path.resolve()), "manifest_sha256": self.pool_sha256},
            "rounds": [asdict(r) for r in records],
            "class_names": list(self.class_names),
        }

    def _load_state(self) -> tuple[list[RoundRecord], list[str], np.ndarray, np.ndarray, Classifier]:
        state = self.folder.read_state()
        if state is None:
            # Written before anything is asked: from here on the folder belongs to this
            # configuration, and answers kept for it are not handed to another.
            self.folder.write_state(self._state([]))
            state = self._state([])
        ran_on = state.get("pool") or {}
        if ran_on.get("manifest_sha256") != self.pool_sha256:
            raise InvalidArgument(
                f"{self.out} holds a run on the pool {ran_on.get('path', '(none recorded)')}, not "
                f"{self.pool.path.resolve()}; resume it with that --pool, or choose another --out"
            )
        saved = LoopConfig.from_dict(state["config"])
        if saved != self.config:
            raise InvalidArgument(
                f"{self.out} holds a run with a different configuration; choose another output folder "
                "or delete it to start over"
            )
        records = [RoundRecord(**r) for r in state["rounds"]]
        self.folder.recover(len(records))
        model = self._new_model()
        if not records:
            return [], [], np.zeros(0, np.int64), np.zeros((0, *self.pool.image_shape[1:]), np.uint8), model
        last = records[-1]
        added = last.answered if last.answered >= 0 else len(last.selected)
        ids, labels, rois = self.folder.read_labelled(last.labelled + added)
        model.load_state_dict(self.folder.read_model())
        return records, ids, labels, rois, model

    def _new_model(self) -> Classifier:
        torch.manual_seed(self.config.seed)
        return build_model(
            self.config.arch,
            self.config.head,
            self.num_classes,
            in_channels=self.pool.image_shape[0],
            roi_head=self.config.roi_head,
        )

    def _stage(self, r: int, stage: str) -> None:
        if self.on_stage is not None:
            self.on_stage(r, stage)

    def _answers(
        self, key: str, r: int, stage: str, ids: list[str], model: Classifier | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The annotator's answer for `ids`: the stored one if it was ever given, else asked
        for and stored before anything else happens. `model`: the one that chose them (None
        for the initial set), for an annotator that shows hints."""
        stored = self.folder.read_answers(key, ids)
        if stored is not None:
            return stored
        self._stage(r, stage)
        n = 0 if model is None else r + 1
        labels, rois = self.annotator.annotate(PendingRequest(n, ids, lambda: self._request(n, ids, model)))
        self.folder.write_answers(key, ids, labels, rois)
        return labels, rois

    def _request(self, n: int, ids: list[str], model: Classifier | None) -> AnnotationRequest:
        """Request `n` (0: the initial set, r + 1: round r's selection): the scans, the pool's
        ROIs and, with the model that chose them, its probabilities, Grad-CAMs and the scores
        that ranked them."""
        cfg = self.config
        taken = self.pool.take([self.index[i] for i in ids], ("images", "rois"))
        request = AnnotationRequest(
            n, taken["images"], taken["rois"], tuple(self.class_names), str(self.pool.path.resolve())
        )
        request.ranked_by = chosen_by(cfg, n)
        request.cold_start = n > 0 and cfg.cold(n - 1)
        if model is not None:
            acquisition = cfg.round_acquisition(n - 1)
            request.probs, request.cams, predicted = model_view(
                model, taken["images"], cfg.layer, self.scale, cfg.mean, cfg.std, self.exporter.roi_threshold
            )
            request.ranking = {row["id"]: row for row in self.folder.read_ranking(n - 1)}
            # The hints outline the ROI the misalignment was measured against.
            request.hint_rois, request.hint_sources = hint_rois(
                taken["images"], taken["rois"], acquisition.roi, predicted
            )
        return request

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> list[RoundRecord]:
        cfg = self.config
        records, ids, labels, rois, model = self._load_state()
        if not records:
            ids = list(cfg.initial_ids) or initial_selection(
                self.pool, cfg.initial, cfg.seed, cfg.initial_balance
            )
            unknown = [i for i in ids if i not in self.index]
            if unknown:
                raise InvalidArgument(f"initial IDs not in {self.pool.path}: {unknown[:5]}")
            labels, rois = self._answers("initial", 0, "initial", ids)
            ids, labels, rois = answered_part(ids, labels, rois)
        for r in range(len(records), cfg.rounds + 1):
            record, model = self._train_round(r, ids, labels, rois, model)
            t0 = time.perf_counter()
            if r < cfg.rounds:
                if not record.model_version:  # no version yet: the round was not scored
                    record.selected, record.model_version, record.note = self._acquire(model, r, ids)
                    # Kept before it is sent: a resumed round sends this selection, not a new one.
                    self.folder.save_progress(r, {"record": asdict(record)})
                new_labels, new_rois = self._answers(
                    f"round-{r:04d}", r, "annotation", record.selected, model
                )
                got, new_labels, new_rois = answered_part(record.selected, new_labels, new_rois)
                if len(got) < len(record.selected):
                    record.answered = len(got)
                ids = ids + got
                labels = np.concatenate([labels, new_labels])
                rois = np.concatenate([rois, new_rois])
            elif not record.model_version:
                # The final model is the run's result: exported and published like the others.
                record.model_version = self._publish(model, r)
            self._stage(r, "recording")
            record.seconds += time.perf_counter() - t0
            records.append(record)
            self.folder.commit(r, self._state(records), ids, labels, rois)
            if self.log is not None:
                self.log(record, model)
        return records

    def _train_round(
        self, r: int, ids: list[str], labels: np.ndarray, rois: np.ndarray, model: Classifier
    ) -> tuple[RoundRecord, Classifier]:
        """Round `r`'s trained model and metrics: those kept when the run stopped after training
        it, else trained now (and kept)."""
        cfg = self.config
        kept = self.folder.load_progress(r)
        if kept is not None:
            progress, weights = kept
            model.load_state_dict(weights)
            return RoundRecord(**progress["record"]), model
        t0 = time.perf_counter()
        self._stage(r, "training")
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
        nan = float("nan")
        metrics = (
            evaluate(model, cfg.layer, *self.test, roi_threshold=self.exporter.roi_threshold)
            if self.test is not None
            else {"accuracy": nan, "macro_f1": nan, "cam_dice": nan}
        )
        record = RoundRecord(round=r, labelled=len(ids), train_loss=history[-1]["loss"], **metrics)
        record.seconds = time.perf_counter() - t0
        self.folder.save_progress(r, {"record": asdict(record)}, model.state_dict())
        if self.on_trained is not None:
            self.on_trained(record)
        return record, model

    def _publish(self, model: Classifier, r: int) -> int:
        """Round `r`'s model as the run folder's `model.onnx`, published; its version."""
        self._stage(r, "export")
        path = self.exporter.export(model, self.out / "model.onnx", round_index=r)
        # A resumed round exports the same weights to the same bytes, which the scorers answer
        # with the version they hold (the latest): a killed publish or scoring makes no new one.
        self._stage(r, "publish")
        return int(self.client.publish_model(path, self.model_name).version)

    def _acquire(self, model: Classifier, r: int, labelled: list[str]) -> tuple[list[str], int, str]:
        """The round's selection, the model version that made it and what the scoring noted."""
        cfg = self.config
        version = self._publish(model, r)
        self._stage(r, "scoring")
        result = self.client.score_pool(
            self.pool_ref,
            model=self.model_name,
            version=version,
            top_k=cfg.per_round,
            exclude_ids=labelled,
            progress=False,
            **asdict(cfg.round_acquisition(r)),
        )
        # The scores a person is shown beside the scans, kept with the round.
        self.folder.write_ranking(r, rows(result.top, tuple(self.class_names)))
        note = result.misalignment_note(cfg.round_acquisition(r)) or ""
        return result.top.ids.tolist(), version, note


def labels_by_name(labels: np.ndarray, test_names: list[str], names: list[str]) -> np.ndarray:
    """A test pool's labels as the training pool's class indices: matched by name (the same
    classes in another order are mapped); other classes are refused, naming both lists."""
    if not test_names or test_names == names:
        return labels
    if sorted(test_names) != sorted(names):
        raise InvalidArgument(
            f"the test pool's classes {test_names} are not the pool's {names}: accuracy would compare "
            "different things; import the test pool with the same class names"
        )
    return np.array([names.index(n) for n in test_names], dtype=labels.dtype)[labels]
