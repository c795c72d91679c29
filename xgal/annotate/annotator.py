"""Who supplies labels and ROIs for the selected scans, and what they are shown.

The loop hands an `Annotator` one `PendingRequest` per round: the IDs asked about and, built
only when the annotator asks for it, the `AnnotationRequest` (the scans, the pool's ROIs, the
choosing model's probabilities and Grad-CAM, the scores that ranked them). The simulation's
oracle reads the IDs only, so it never pays for a Grad-CAM pass; the folder hand-off and Label
Studio show a person everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

WAITING_EXIT = 3  # `xgal train`'s exit code while a round waits for answers


class AwaitingAnnotations(Exception):  # noqa: N818 - not an error: the run waits for a person
    """The run stopped at a round whose answers are not in yet; the message says what to do."""


@dataclass
class AnnotationRequest:
    """What the annotator is shown for the selected scans, in the order asked."""

    round_index: int
    images: np.ndarray  # [n, C, H, W] as the pool stores them
    rois: np.ndarray  # [n, H, W] the pool's ROIs (all zero: none)
    class_names: tuple[str, ...]
    pool: str  # the pool's path, for the answers' checks
    cams: np.ndarray | None = None  # [n, H, W] in [0, 1]; None before the first model
    probs: np.ndarray | None = None  # [n, K]
    ranking: dict[str, dict] = field(default_factory=dict)  # id -> score, uncertainty, misalignment
    ranked_by: str = ""  # what chose these scans, in words (xgal.core.selection_text)
    cold_start: bool = False  # chosen by the cold start: the score is not U or M
    # The ROIs the hints outline: those the misalignment was measured against (None: `rois`),
    # and what each is (ROW_ROI_SOURCES codes: the expert's, the body's, the learned one).
    hint_rois: np.ndarray | None = None
    hint_sources: np.ndarray | None = None


class PendingRequest:
    """A round's request: the IDs now, the rest (`build()`) only if the annotator shows it.

    `round_index` numbers requests as the hand-off does: 0 for the initial set, r + 1 for the
    selection made by round r's model."""

    def __init__(self, round_index: int, ids: list[str], build: Callable[[], AnnotationRequest]) -> None:
        self.round_index, self.ids = round_index, list(ids)
        self._build = build
        self._built: AnnotationRequest | None = None

    def build(self) -> AnnotationRequest:
        if self._built is None:
            self._built = self._build()
        return self._built


class Annotator(Protocol):
    def annotate(self, request: PendingRequest) -> tuple[np.ndarray, np.ndarray]:
        """Labels [n] int64 and ROI masks [n, H, W] uint8 for `request.ids`, in that order; label
        -1 marks a scan left unanswered (it stays unlabelled and may be asked again).

        The loop stores the answer before it does anything else and never asks for it again.
        Only a run that died while waiting for an answer asks again, then for the same IDs in
        the same order: a tool can take that request as the one already open. An annotator
        that must wait for a person raises `AwaitingAnnotations`."""
        ...
