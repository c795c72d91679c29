"""`xgal demo`: active learning on built-in synthetic data, strategies side by side.

For each seed: a synthetic pool whose scans carry a shortcut tag (correlated with the class in
the pool, random in the test split), a local scorer on 127.0.0.1, and one active-learning run
per arm at the same budget (random, uncertainty only, xgal, xgal with pool-rank-normalised
criteria, xgal without the Grad-CAM guidance loss). Every round goes through the service:
export -> publish -> ScorePool. Writes results.json, learning_curves.png and cam_overlays.png.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from xgal.client import ScorerClient
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.errors import InvalidArgument
from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.trainer.annotator import OracleAnnotator
from xgal.trainer.export import ScoringGraphExporter
from xgal.trainer.gradcam import scores_and_cam
from xgal.trainer.loop import ActiveLearningLoop, LoopConfig, RoundRecord
from xgal.trainer.nets.classifier import Classifier
from xgal.trainer.train import TrainConfig, to_input


@dataclass(frozen=True)
class Arm:
    name: str
    strategy: str
    normalise: str = "none"
    alpha: float = 0.1
    balance: str = "none"

    @property
    def acquisition(self) -> AcquisitionConfig:
        return AcquisitionConfig(strategy=self.strategy, normalise=self.normalise, balance=self.balance)


ALL_ARMS = (
    Arm("random", "random"),
    Arm("uncertainty", "uncertainty"),
    Arm("xgal", "xgal"),
    Arm("xgal-rank", "xgal", normalise="rank"),
    Arm("xgal-balanced", "xgal", balance="predicted"),
    Arm("xgal-alpha0", "xgal", alpha=0.0),
)
# The default answers the questions the demo is for (xgal vs random and vs entropy alone, raw vs
# rank-normalised criteria, the guidance loss on or off) in under 10 minutes on 2 cores;
# `--arms` adds xgal-balanced (one more arm is about 1.5 minutes).
ARMS = tuple(a for a in ALL_ARMS if a.name != "xgal-balanced")
QUICK_ARMS = ARMS[:3]


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
    epochs: int


FULL = DemoBudget(pool=3000, test=300, initial=60, per_round=60, rounds=5, epochs=30)
QUICK = DemoBudget(pool=1000, test=150, initial=30, per_round=30, rounds=3, epochs=20)
OVERLAY_IMAGES = 6


def _pool(path: Path, size: int, seed: int, split: str) -> Pool:
    if (path / "manifest.json").is_file():
        pool = Pool(path)
        if pool.count == size and f"seed={seed}," in pool.description:
            return pool
    return synth_pool(path, size, seed=seed, split=split, overwrite=True)


def _round_table(seed: int, results: dict[str, list[RoundRecord]]) -> Table:
    table = Table(title=f"seed {seed}: test accuracy / CAM-ROI Dice per round", title_justify="left")
    table.add_column("labelled", justify="right")
    for name in results:
        table.add_column(name, justify="right")
    n_rounds = max(len(v) for v in results.values())
    for r in range(n_rounds):
        row = [str(next(iter(results.values()))[r].labelled)]
        for recs in results.values():
            row.append(f"{recs[r].accuracy:.3f} / {recs[r].cam_dice:.3f}" if r < len(recs) else "")
        table.add_row(*row)
    return table


def _summary(all_results: dict[int, dict[str, list[RoundRecord]]]) -> dict:
    arms = next(iter(all_results.values())).keys()
    out: dict = {"arms": {}, "differences": {}}
    final = {
        a: np.array([[s[a][-1].accuracy, s[a][-1].cam_dice] for s in all_results.values()]) for a in arms
    }
    for a, v in final.items():
        out["arms"][a] = {
            "final_accuracy_mean": float(v[:, 0].mean()),
            "final_accuracy_std": float(v[:, 0].std()),
            "final_cam_dice_mean": float(v[:, 1].mean()),
            "final_cam_dice_std": float(v[:, 1].std()),
            "labelled": next(iter(all_results.values()))[a][-1].labelled,
        }
    pairs = [
        ("xgal", "random"),
        ("xgal", "uncertainty"),
        ("xgal-rank", "xgal"),
        ("xgal-rank", "uncertainty"),
        ("xgal-balanced", "xgal"),
        ("xgal-balanced", "random"),
        ("xgal", "xgal-alpha0"),
    ]
    for a, b in pairs:
        if a in final and b in final:
            d = final[a] - final[b]
            out["differences"][f"{a} - {b}"] = {
                "accuracy_mean": float(d[:, 0].mean()),
                "accuracy_std": float(d[:, 0].std()),
                "cam_dice_mean": float(d[:, 1].mean()),
                "cam_dice_std": float(d[:, 1].std()),
            }
    return out


def _plot_curves(all_results: dict[int, dict[str, list[RoundRecord]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = next(iter(all_results.values())).keys()
    for arm in arms:
        runs = [s[arm] for s in all_results.values()]
        x = [r.labelled for r in runs[0]]
        for ax, key in zip(axes, ("accuracy", "cam_dice"), strict=True):
            vals = np.array([[getattr(r, key) for r in run] for run in runs])
            ax.plot(x, vals.mean(0), marker="o", label=arm)
            if len(runs) > 1:
                ax.fill_between(x, vals.mean(0) - vals.std(0), vals.mean(0) + vals.std(0), alpha=0.15)
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("CAM-ROI Dice (true class, test)")
    for ax in axes:
        ax.set_xlabel("labelled samples")
        ax.grid(alpha=0.3)
    axes[0].legend()
    n = len(all_results)
    fig.suptitle(
        f"xgal demo: mean{' ± std over ' + str(n) + ' seeds' if n > 1 else ''}"
        " (synthetic pool with a shortcut tag)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_overlays(images: np.ndarray, rois: np.ndarray, cams: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["scan + expert ROI", *cams]
    fig, axes = plt.subplots(len(images), len(cols), figsize=(2.2 * len(cols), 2.2 * len(images)))
    for i in range(len(images)):
        axes[i, 0].imshow(images[i, 0], cmap="gray")
        axes[i, 0].contour(rois[i], levels=[0.5], colors="lime", linewidths=0.8)
        for j, cam in enumerate(cams.values(), start=1):
            axes[i, j].imshow(images[i, 0], cmap="gray")
            axes[i, j].imshow(cam[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].contour(rois[i], levels=[0.5], colors="lime", linewidths=0.8)
    for j, title in enumerate(cols):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _round_logger(
    console: Console,
    arm: Arm,
    layer_name: str,
    last_round: int,
    overlay_data: dict[str, np.ndarray] | None,
    overlay_cams: dict[str, np.ndarray],
) -> Callable[[RoundRecord, Classifier], None]:
    """Prints each finished round; keeps the first and last rounds' CAMs of the overlay images."""

    def on_round(rec: RoundRecord, model: Classifier) -> None:
        console.print(
            f"  {arm.name:<12} round {rec.round}: {rec.labelled:4d} labelled, accuracy {rec.accuracy:.3f}, "
            f"macro-F1 {rec.macro_f1:.3f}, CAM-ROI Dice {rec.cam_dice:.3f} ({rec.seconds:.1f} s)"
        )
        if overlay_data is not None and rec.round in (0, last_round):
            x = to_input(overlay_data["images"], 255.0)
            y = torch.from_numpy(overlay_data["labels"])
            _, cam = scores_and_cam(model, model.get_submodule(layer_name), x, y, differentiable=False)
            overlay_cams[f"{arm.name}, round {rec.round} ({rec.labelled} labels)"] = cam.numpy()

    return on_round


def run_demo(
    out_dir: Path,
    *,
    quick: bool = False,
    seeds: int = 1,
    first_seed: int = 0,
    arms: tuple[Arm, ...] | None = None,
    console: Console | None = None,
) -> dict:
    console = console or Console()
    budget = QUICK if quick else FULL
    arms = arms or (QUICK_ARMS if quick else ARMS)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    console.rule("xgal demo")
    console.print(
        f"budget: {budget.initial} initial + {budget.rounds} x {budget.per_round} acquired from a pool of "
        f"{budget.pool}; test split {budget.test}; arms: {', '.join(a.name for a in arms)}; seeds: {seeds}"
    )
    all_results: dict[int, dict[str, list[RoundRecord]]] = {}
    overlay_cams: dict[str, np.ndarray] = {}
    overlay_data: dict[str, np.ndarray] = {}
    for seed in range(first_seed, first_seed + seeds):
        data = out_dir / f"seed{seed}"
        pool = _pool(data / "pool-train", budget.pool, seed, "train")
        test = _pool(data / "pool-test", budget.test, seed, "test")
        if seed == first_seed:
            ov = test.read(0, OVERLAY_IMAGES, ("images", "rois", "labels"))
            overlay_data = ov
        server = RunningServer(ServerConfig(data_root=data, model_repo=data / "models", port=0))
        console.print(f"seed {seed}: scorer on {server.address}; pools in {data}")
        results: dict[str, list[RoundRecord]] = {}
        # Every arm trains the same network: one trace serves all their exports.
        exporter = ScoringGraphExporter(
            LoopConfig().layer,
            image_shape=pool.image_shape,
            pixel_dtype=pool.pixel_dtype,
            class_names=pool.class_names,
        )
        try:
            with ScorerClient(server.address) as client:
                for arm in arms:
                    config = LoopConfig(
                        initial=budget.initial,
                        per_round=budget.per_round,
                        rounds=budget.rounds,
                        acquisition=arm.acquisition,
                        seed=seed,
                        train=TrainConfig(epochs=budget.epochs, alpha=arm.alpha),
                    )

                    capture = seed == first_seed and arm.name in ("random", "uncertainty", "xgal")
                    on_round = _round_logger(
                        console,
                        arm,
                        config.layer,
                        budget.rounds,
                        overlay_data if capture else None,
                        overlay_cams,
                    )
                    loop = ActiveLearningLoop(
                        config,
                        pool,
                        test,
                        client,
                        OracleAnnotator(pool),
                        data / "runs" / arm.name,
                        model_name=arm.name,
                        log=on_round,
                        exporter=exporter,
                    )
                    results[arm.name] = loop.run()
        finally:
            server.stop(grace=5)
        all_results[seed] = results
        console.print(_round_table(seed, results))

    summary = _summary(all_results)
    table = Table(title=f"final round, mean ± std over {seeds} seed(s)", title_justify="left")
    for col in ("arm", "labelled", "test accuracy", "CAM-ROI Dice"):
        table.add_column(col)
    for arm, s in summary["arms"].items():
        table.add_row(
            arm,
            str(s["labelled"]),
            f"{s['final_accuracy_mean']:.3f} ± {s['final_accuracy_std']:.3f}",
            f"{s['final_cam_dice_mean']:.3f} ± {s['final_cam_dice_std']:.3f}",
        )
    console.print(table)
    for pair, d in summary["differences"].items():
        console.print(
            f"  {pair:<28} accuracy {d['accuracy_mean']:+.3f} ± {d['accuracy_std']:.3f}, "
            f"Dice {d['cam_dice_mean']:+.3f} ± {d['cam_dice_std']:.3f}"
        )
    doc = {
        "budget": asdict(budget),
        "arms": [asdict(a) for a in arms],
        "seeds": list(all_results),
        "rounds": {
            str(seed): {a: [asdict(r) for r in recs] for a, recs in res.items()}
            for seed, res in all_results.items()
        },
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    _plot_curves(all_results, out_dir / "learning_curves.png")
    if overlay_cams:
        ordered = dict(sorted(overlay_cams.items()))
        _plot_overlays(overlay_data["images"], overlay_data["rois"], ordered, out_dir / "cam_overlays.png")
    console.print(
        f"wrote {out_dir / 'results.json'}, {out_dir / 'learning_curves.png'}, "
        f"{out_dir / 'cam_overlays.png'} in {time.perf_counter() - t0:.0f} s"
    )
    return doc


__all__ = ["ALL_ARMS", "ARMS", "QUICK_ARMS", "Arm", "pick_arms", "run_demo"]
