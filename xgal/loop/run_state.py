"""A run folder, written so that a process killed at any instant leaves it resumable.

    state.json       the finished rounds (config, metrics, selections). A round is finished once
                     state.json says so, and it is the last thing a round writes.
    annotations.npz  the labelled set of the last finished round, in the order it was acquired
    model.pt         the model of the last finished round
    rankings/        each round's selection as the scorers ranked it (round-0000.json, ...): the
                     scores a person is shown beside the scans
    answers/         the annotator's answers, one file per answer (initial.npz, round-0000.npz,
                     ...), each on disk as soon as it arrives and never rewritten: an annotator is
                     a person, and what they answered must survive anything that fails later.
    pending/         the round under way: round.json (its metrics once trained, its selection
                     and model version once scored) and model-NNNN.pt (its trained model).

Every file is written to a temporary name, fsync'd and renamed over the old one (then the
folder is fsync'd), so a reader sees the old or the new content, never a torn one.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from xgal.core.durable import atomic_write, fsync_dir, npz_bytes
from xgal.core.errors import InvalidArgument


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class RunFolder:
    """The files of one run (the module's docstring); the loop decides what goes in them."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.answers = self.path / "answers"
        self.pending = self.path / "pending"
        self.rankings = self.path / "rankings"
        for d in (self.path, self.answers, self.pending, self.rankings):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    # -- finished rounds ------------------------------------------------------------------------
    def read_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        return json.loads(self.state_path.read_text())

    def write_state(self, state: dict) -> None:
        atomic_write(self.state_path, json.dumps(state, indent=1).encode())

    def read_labelled(self, count: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The first `count` annotations: the file may already hold the next round's (a run
        killed between writing it and state.json), which that round will add again."""
        ann = np.load(self.path / "annotations.npz", allow_pickle=False)
        if len(ann["ids"]) < count:
            raise InvalidArgument(
                f"{self.path / 'annotations.npz'} holds {len(ann['ids'])} annotations, state.json "
                f"says {count}; the run folder is damaged"
            )
        return ann["ids"][:count].tolist(), ann["labels"][:count], ann["rois"][:count]

    def read_model(self) -> dict:
        return torch.load(self.path / "model.pt", weights_only=True, map_location="cpu")

    def commit(self, r: int, state: dict, ids: Sequence[str], labels: np.ndarray, rois: np.ndarray) -> None:
        """Finish round `r`: its labelled set, then state.json (the commit point), then its model
        from pending/ (`recover` completes that step if the run dies before it)."""
        data = npz_bytes(ids=np.array(list(ids), dtype=str), labels=labels, rois=rois)
        atomic_write(self.path / "annotations.npz", data)
        self.write_state(state)
        self.recover(r + 1)

    def recover(self, finished: int) -> None:
        """Complete an interrupted `commit` and drop what belongs to rounds already finished."""
        last = self._pending_model(finished - 1)
        if finished > 0 and last.is_file():
            os.replace(last, self.path / "model.pt")
            fsync_dir(self.path)
        progress = self._read_progress()
        if progress is not None and progress["round"] < finished:
            (self.pending / "round.json").unlink()
        for stale in self.pending.glob("model-*.pt"):
            if int(stale.stem.split("-")[1]) < finished:
                stale.unlink()

    # -- the round under way --------------------------------------------------------------------
    def _pending_model(self, r: int) -> Path:
        return self.pending / f"model-{r:04d}.pt"

    def _read_progress(self) -> dict | None:
        path = self.pending / "round.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_progress(self, r: int, progress: dict, model_state: dict | None = None) -> None:
        """`model_state` when the round has just been trained; its file is written first, so a
        round.json for round `r` always has its model."""
        if model_state is not None:
            atomic_write(self._pending_model(r), _torch_bytes(model_state))
        atomic_write(self.pending / "round.json", json.dumps({"round": r, **progress}).encode())

    def load_progress(self, r: int) -> tuple[dict, dict] | None:
        """What round `r` had done when the run stopped, and its trained model; None when it
        had not finished training."""
        progress = self._read_progress()
        if progress is None or progress["round"] != r or not self._pending_model(r).is_file():
            return None
        model = torch.load(self._pending_model(r), weights_only=True, map_location="cpu")
        return progress, model

    # -- the rankings the annotator is shown ----------------------------------------------------
    def write_ranking(self, r: int, rows: list[dict]) -> None:
        atomic_write(self.rankings / f"round-{r:04d}.json", json.dumps(rows).encode())

    def read_ranking(self, r: int) -> list[dict]:
        """Round `r`'s ranked selection; empty where none was kept."""
        path = self.rankings / f"round-{r:04d}.json"
        return json.loads(path.read_text()) if path.is_file() else []

    # -- the annotator's answers ----------------------------------------------------------------
    def _answer_path(self, key: str) -> Path:
        return self.answers / f"{key}.npz"

    def read_answers(self, key: str, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        path = self._answer_path(key)
        if not path.is_file():
            return None
        stored = np.load(path, allow_pickle=False)
        if stored["ids"].tolist() != list(ids):
            # The selection is on disk before it is sent, so a resumed round asks for the same
            # IDs; other IDs mean the folder was changed by hand or holds another run.
            raise InvalidArgument(f"{path} holds answers for other samples than this run asks about")
        return stored["labels"], stored["rois"]

    def write_answers(self, key: str, ids: Sequence[str], labels: np.ndarray, rois: np.ndarray) -> None:
        if len(labels) != len(ids) or len(rois) != len(ids):
            raise InvalidArgument(
                f"the annotator answered {len(labels)} labels and {len(rois)} ROIs for {len(ids)} samples"
            )
        data = npz_bytes(True, ids=np.array(list(ids), dtype=str), labels=labels, rois=rois)
        atomic_write(self._answer_path(key), data)
