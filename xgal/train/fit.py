"""Training a `Classifier` on the labelled set: cross-entropy or episodic prototypical loss,
plus the optional Grad-CAM guidance loss α·mean(1 − softDice(CAM of the true class, ROI)).

Adam with weight decay, gradient-norm clipping, fixed seeds, and one of two schedules: the
authors' ReduceLROnPlateau on a held-out part of the labelled set (or the training loss when it
is too small to split), or a cosine decay over a fixed budget of steps. The model is trained in
place; whether it is reset between rounds is the loop's choice (`LoopConfig.reset_each_round`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xgal.core.contract import Normalisation
from xgal.core.errors import InvalidArgument
from xgal.train.gradcam import PixelNormalise, scores_and_cam, scores_cam_roi, soft_dice
from xgal.train.nets.classifier import Classifier
from xgal.train.nets.roi_head import DEFAULT_ROI_THRESHOLD
from xgal.train.roi_loss import learned_roi_dice, roi_loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    alpha: float = 0.1  # Grad-CAM guidance weight; 0 = off
    roi_weight: float = 1.0  # weight of the ROI head's loss (train/roi_loss.py), when the model has one
    loss: str = "ce"  # "ce" or "proto" (episodic, prototypical head only)
    episodes: int = 10  # per epoch, for "proto"
    shots: int = 3
    queries: int = 3
    # Labels held out to drive the LR schedule (when >= 50 samples). 0 = schedule on the
    # training loss: with a few dozen labels each one is worth more in training.
    val_fraction: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    # A fixed number of optimiser steps per round, whatever the labelled set's size (0 = `epochs`
    # passes over it). With a fixed budget the first rounds, a few dozen labels, are trained as
    # long as the last: with `epochs` they get a handful of steps and every arm's model is noisy.
    steps: int = 0
    schedule: str = "plateau"  # "plateau" (the authors') or "cosine" (to zero over the run)
    seed: int = 0
    device: str = "auto"  # "auto" = CUDA when present, else CPU

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "proto"):
            raise InvalidArgument(f"loss must be 'ce' or 'proto', got {self.loss!r}")
        if self.schedule not in ("plateau", "cosine"):
            raise InvalidArgument(f"schedule must be 'plateau' or 'cosine', got {self.schedule!r}")
        if self.steps < 0:
            raise InvalidArgument(f"steps must be >= 0 (0 = train for `epochs`), got {self.steps}")
        if self.alpha < 0:
            raise InvalidArgument(f"alpha must be >= 0, got {self.alpha}")
        if self.roi_weight < 0:
            raise InvalidArgument(f"roi_weight must be >= 0, got {self.roi_weight}")
        if self.epochs < 1 or self.batch_size < 2:
            raise InvalidArgument("epochs must be >= 1 and batch_size >= 2")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_input(
    images: np.ndarray, scale: float, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Tensor:
    """Stored pixels -> the network's input, the same normalisation the scoring graph applies."""
    c = images.shape[1]
    norm = Normalisation(
        scale,
        tuple(mean) if mean is not None else (0.0,) * c,
        tuple(std) if std is not None else (1.0,) * c,
    )
    with torch.no_grad():
        return PixelNormalise(norm)(torch.from_numpy(np.ascontiguousarray(images)))


@torch.no_grad()
def refresh_prototypes(model: Classifier, x: Tensor, y: Tensor, batch: int = 256) -> None:
    head = model.head
    if getattr(head, "kind", "") != "prototypical":
        return
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    emb = torch.cat([head.embed(model.pooled(x[i : i + batch].to(device))) for i in range(0, len(x), batch)])
    head.set_prototypes(emb, y.to(device))
    model.train(was_training)


def _guidance(cam01: Tensor, roi: Tensor) -> Tensor:
    has = roi.flatten(1).amax(1) > 0
    if not bool(has.any()):
        return cam01.new_zeros(())
    return (1 - soft_dice(cam01[has], roi[has])).mean()


def _scores(
    model: Classifier, layer: nn.Module | None, x: Tensor, y: Tensor, roi: Tensor | None, cfg: TrainConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Class scores, the guidance term and the ROI head's loss (zeros when off) of one batch,
    from one pass through the trunk."""
    learn_roi = cfg.roi_weight > 0 and roi is not None and model.roi_head is not None
    zero = x.new_zeros(())
    if cfg.alpha > 0 and layer is not None and roi is not None:
        scores, cam01, logits = scores_cam_roi(model, layer, x, y, roi=learn_roi)
        guide = _guidance(cam01, roi)
    else:
        scores, logits = model.forward_with_roi(x) if learn_roi else (model(x), None)
        guide = zero
    seg = roi_loss(logits, roi) if logits is not None and roi is not None else zero
    return scores, guide, seg


def _step_loss(
    model: Classifier, layer: nn.Module | None, x: Tensor, y: Tensor, roi: Tensor | None, cfg: TrainConfig
) -> tuple[Tensor, float, float, float]:
    scores, guide, seg = _scores(model, layer, x, y, roi, cfg)
    ce = F.cross_entropy(scores, y)
    loss = ce + cfg.alpha * guide + cfg.roi_weight * seg
    return loss, float(ce.detach()), float(guide.detach()), float(seg.detach())


def _episode_batches(y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> list[tuple[Tensor, Tensor]]:
    """(support, query) index sets of one episode: `shots` + `queries` per class."""
    out = []
    classes = torch.unique(y)
    for _ in range(cfg.episodes):
        sup, qry = [], []
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            if len(idx) < 2:
                continue
            s = min(cfg.shots, len(idx) - 1)
            sup.append(idx[:s])
            qry.append(idx[s : s + cfg.queries])
        if sup:
            out.append((torch.cat(sup), torch.cat(qry)))
    return out


def _proto_step(
    model: Classifier,
    layer: nn.Module | None,
    x: Tensor,
    y: Tensor,
    roi: Tensor | None,
    support: Tensor,
    query: Tensor,
    cfg: TrainConfig,
) -> tuple[Tensor, float, float, float]:
    """Episodic prototypical loss: prototypes from the support embeddings, CE over the
    queries' negative distances; the guidance term and the ROI head's loss on the queries."""
    head = model.head
    emb_s = head.embed(model.pooled(x[support]))
    classes = torch.unique(y[support])
    protos = torch.stack([emb_s[y[support] == c].mean(0) for c in classes])
    remap = {int(c): i for i, c in enumerate(classes)}
    yq = torch.tensor([remap[int(v)] for v in y[query]], device=x.device)
    saved = head.prototypes
    # The head scores against the episode's prototypes (with their gradient); the buffer is
    # restored afterwards.
    try:
        head.prototypes = torch.zeros_like(saved).index_copy(0, classes, protos)
        rq = None if roi is None else roi[query]
        scores, guide, seg = _scores(model, layer, x[query], y[query], rq, cfg)
        ce = F.cross_entropy(scores[:, classes], yq)
    finally:
        head.prototypes = saved
    loss = ce + cfg.alpha * guide + cfg.roi_weight * seg
    return loss, float(ce.detach()), float(guide.detach()), float(seg.detach())


def train_classifier(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    roi: Tensor | None = None,
    target_layer: str | None = None,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train in place on normalised inputs `x`, labels `y` and (for the guidance loss) ROI masks
    `roi` [N, H, W] with Grad-CAM at `target_layer`; a model with an ROI head learns it from the
    scans whose `roi` is not empty. Returns one dict per epoch (loss, ce, guidance, roi_loss,
    val_loss, lr); `progress` receives each as it is made."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as images and at least one; got {len(x)} and {len(y)}")
    if config.alpha > 0 and (roi is None or target_layer is None):
        raise InvalidArgument("the guidance loss (alpha > 0) needs ROIs and a target layer")
    if config.roi_weight > 0 and roi is None and getattr(model, "roi_head", None) is not None:
        raise InvalidArgument("the model's ROI head learns from ROIs: pass `roi` (or roi_weight=0)")
    if config.loss == "proto" and getattr(model.head, "kind", "") != "prototypical":
        raise InvalidArgument("the episodic prototypical loss needs a prototypical head")
    device = resolve_device(config.device)
    # channels_last: oneDNN's convolutions (and cuDNN's) run 1.4-1.8x faster in that layout
    # (measured on the demo's small CNN, 2 cores); the model is handed back contiguous.
    model.to(device, memory_format=torch.channels_last)
    # The labelled set is small (hundreds to a few thousand images): it lives on the device.
    x, y = x.to(device, memory_format=torch.channels_last), y.to(device)
    roi = roi.to(device) if roi is not None else None
    layer = model.get_submodule(target_layer) if target_layer else None
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(x), generator=gen)
    n_val = int(len(x) * config.val_fraction) if len(x) >= 50 else 0
    val, tr = order[:n_val], order[n_val:]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    per_pass = config.episodes if config.loss == "proto" else math.ceil(len(tr) / config.batch_size)
    total = config.steps or config.epochs * max(per_pass, 1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=config.plateau_factor, patience=config.plateau_patience
    )
    cosine = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    )
    history: list[dict] = []
    step, epoch = 0, 0
    while step < total if config.steps else epoch < config.epochs:
        refresh_prototypes(model, x[tr.to(device)], y[tr.to(device)])
        model.train()
        totals = np.zeros(4)
        steps = 0
        if config.loss == "proto":
            batches = [(tr[s], tr[q]) for s, q in _episode_batches(y[tr.to(device)].cpu(), config, gen)]
        else:
            perm = tr[torch.randperm(len(tr), generator=gen)]
            batches = [
                (perm[i : i + config.batch_size], None) for i in range(0, len(perm), config.batch_size)
            ]
        for idx, query in batches:
            if config.steps and step >= total:
                break
            idx = idx.to(device)
            query = query.to(device) if query is not None else None
            if config.loss == "proto":
                loss, ce, guide, seg = _proto_step(model, layer, x, y, roi, idx, query, config)
            else:
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                loss, ce, guide, seg = _step_loss(
                    model, layer, x[idx], y[idx], None if roi is None else roi[idx], config
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            if config.schedule == "cosine":
                cosine.step()
            totals += (float(loss.detach()), ce, guide, seg)
            steps += 1
            step += 1
        mean = totals / max(steps, 1)
        val_loss = _val_loss(model, x, y, val) if n_val else float(mean[0])
        if config.schedule == "plateau":
            plateau.step(val_loss)
        record = {
            "epoch": epoch,
            "steps": step,
            "loss": mean[0],
            "ce": mean[1],
            "guidance": mean[2],
            "roi_loss": mean[3],
            "val_loss": val_loss,
            "lr": opt.param_groups[0]["lr"],
        }
        history.append(record)
        epoch += 1
        if progress is not None:
            progress(record)
        if config.steps and not steps:
            break  # nothing trainable (a single label): a step budget would never be spent
    recalibrate_batchnorm(model, x, config.batch_size)
    refresh_prototypes(model, x, y)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: Tensor, batch: int = 64) -> None:
    """Re-estimate BatchNorm running statistics with the final weights.

    The running averages are updated during training while the weights move fast; with a few
    dozen labels (a few dozen steps) they end up describing weights that no longer exist, and an
    eval-mode model can predict one class for everything. An exact average over the labelled
    set with the final weights removes that lag."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calls below
    was_training = model.training
    model.train()
    try:
        for i in range(0, len(x), batch):
            if len(x[i : i + batch]) >= 2:
                model(x[i : i + batch])
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def _val_loss(model: Classifier, x: Tensor, y: Tensor, idx: Tensor) -> float:
    refresh_prototypes(model, x, y)
    model.eval()
    idx = idx.to(x.device)
    return float(F.cross_entropy(model(x[idx]), y[idx]))


@torch.no_grad()
def predict(model: Classifier, x: Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [model(x[i : i + batch].to(device)).argmax(1).cpu() for i in range(0, len(x), batch)]
    ).numpy()


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    f1s = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1s))


def evaluate(
    model: Classifier,
    target_layer: str,
    x: Tensor,
    y: Tensor,
    roi: Tensor,
    batch: int = 128,
    roi_threshold: float = DEFAULT_ROI_THRESHOLD,
) -> dict[str, float]:
    """Accuracy, macro-F1 and the mean CAM–ROI Dice (CAM of the true class) on a test split; with
    an ROI head, `roi_dice`: the predicted ROI's Dice against the expert's."""
    model.eval()
    device = next(model.parameters()).device
    layer = model.get_submodule(target_layer)
    preds, dices = [], []
    num_classes = 0
    for i in range(0, len(x), batch):
        xb, yb, rb = (t[i : i + batch].to(device) for t in (x, y, roi))
        scores, cam01 = scores_and_cam(model, layer, xb, yb, differentiable=False)
        num_classes = int(scores.shape[1])
        preds.append(scores.argmax(1).cpu().numpy())
        has = rb.flatten(1).amax(1) > 0
        dices.append(soft_dice(cam01, rb)[has].cpu().numpy())
    pred = np.concatenate(preds)
    truth = y.numpy()
    out = {
        "accuracy": float((pred == truth).mean()),
        "macro_f1": macro_f1(truth, pred, num_classes),
        # NaN (printed "n/a") when no test sample has an ROI: there is nothing to measure.
        "cam_dice": float(np.concatenate(dices).mean()) if sum(map(len, dices)) else float("nan"),
    }
    if getattr(model, "roi_head", None) is not None:  # the predicted ROI against the expert's
        out["roi_dice"] = learned_roi_dice(model, x, roi, roi_threshold, batch)
    return out
