"""Supervised training of a `Classifier` on a labelled set held in memory.

Cross-entropy on the class scores for every head; for the prototypical head the scores are
negative distances to prototypes that are re-estimated from the labelled embeddings before
each epoch and once more at the end (so the exported buffer matches the trained embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xgal.trainer.nets.classifier import Classifier


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    seed: int = 0


def to_input(
    images: np.ndarray, scale: float, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Stored pixels -> the network's input, the same normalisation the scoring graph applies."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32) / scale
    c = x.shape[1]
    if mean is not None:
        x = x - torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    if std is not None:
        x = x / torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return x


@torch.no_grad()
def refresh_prototypes(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> None:
    head = model.head
    if getattr(head, "kind", "") != "prototypical":
        return
    was_training = model.training
    model.eval()
    emb = torch.cat([head.embed(model.pooled(x[i : i + batch])) for i in range(0, len(x), batch)])
    head.set_prototypes(emb, y)
    model.train(was_training)


def train_classifier(
    model: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place on normalised inputs `x` and labels `y`; returns the mean loss per epoch.
    `progress(epoch, loss)` is called after each epoch."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images and at least one; got {len(x)} and {len(y)}")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = []
    for epoch in range(config.epochs):
        refresh_prototypes(model, x, y)
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        history.append(total / max(seen, 1))
        if progress is not None:
            progress(epoch, history[-1])
    refresh_prototypes(model, x, y)
    model.eval()
    return history


@torch.no_grad()
def predict(model: Classifier, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()
