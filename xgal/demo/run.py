"""`xgal demo`: active learning on built-in synthetic data, strategies side by side.

For each seed: a synthetic pool whose scans carry a shortcut tag (correlated with the class in
the pool, random in the test split; with `shortcut=False` random in the pool too, the control),
a local scorer on 127.0.0.1, and one active-learning run per arm at the same budget, trained as
the `demo` preset says. Every round goes through the service: export -> publish -> ScorePool.
Writes results.json, learning_curves.png and cam_overlays.png.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from xgal.annotate.oracle import OracleAnnotator
from xgal.client import ScorerClient
from xgal.core.contract import MAX_VIEWS
from xgal.demo.arms import ARMS, FULL, QUICK, QUICK_ARMS, Arm, DemoBudget, Regime
from xgal.demo.plots import plot_curves, plot_overlays
from xgal.demo.report import summarise
from xgal.demo.seeds import roles_text, seed_role
from xgal.demo.tables import arms_table, differences_table, round_tables
from xgal.export import ScoringGraphExporter
from xgal.loop import ActiveLearningLoop, RoundRecord
from xgal.loop.presets import preset
from xgal.pool.format import Pool
from xgal.pool.synth import synth_description, synth_pool
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.train.fit import to_input
from xgal.train.gradcam import scores_and_cam
from xgal.train.nets.classifier import Classifier

OVERLAY_IMAGES = 6
INITIAL_WORDS = {
    "none": "drawn at random, no label read",
    "oracle": "stratified by the pool's true labels (--initial-balance oracle, the authors' start)",
}
NUM_CLASSES = 3


def _pool(path: Path, size: int, seed: int, split: str, regime: Regime) -> Pool:
    """The synthetic pool, reused when it is already there with the same description. Without
    the shortcut the tag's glyph names the true class with probability 1/K: independent of the
    class, as in the test split (the generator itself is unchanged)."""
    kwargs = dict(
        seed=seed,
        split=split,
        num_classes=NUM_CLASSES,
        marker_fraction=regime.tag_fraction,
        marker_agreement=regime.tag_agreement,
        lesion_scale=regime.lesion_scale,
    )
    if (path / "manifest.json").is_file():
        pool = Pool(path)
        if pool.count == size and pool.description == synth_description(**kwargs):
            return pool
    return synth_pool(path, size, overwrite=True, **kwargs)


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
            f"macro-F1 {rec.macro_f1:.3f}, CAM-ROI Dice {rec.cam_dice:.3f}"
            + ("" if math.isnan(rec.roi_dice) else f", learned ROI Dice {rec.roi_dice:.3f}")
            + f" ({rec.seconds:.1f} s)"
        )
        if overlay_data is not None and rec.round in (0, last_round):
            device = next(model.parameters()).device  # the trainer's: CUDA where there is one
            x = to_input(overlay_data["images"], 255.0).to(device)
            y = torch.from_numpy(overlay_data["labels"]).to(device)
            _, cam = scores_and_cam(model, model.get_submodule(layer_name), x, y, differentiable=False)
            overlay_cams[f"{arm.name}, round {rec.round} ({rec.labelled} labels)"] = cam.cpu().numpy()

    return on_round


def run_demo(
    out_dir: Path,
    *,
    quick: bool = False,
    seeds: int = 1,
    first_seed: int = 0,
    arms: tuple[Arm, ...] | None = None,
    shortcut: bool = True,
    console: Console | None = None,
    initial_balance: str = "none",
    regime: Regime | None = None,
    budget: DemoBudget | None = None,
    roi_fraction: float = 1.0,
) -> dict:
    """Run every arm for every seed; print and write what they show (see the module doc).
    `regime`: the synthetic pool's (default: the shortcut as the demo has it, or with
    `shortcut=False` the control); `budget`: labels and pool sizes (default: QUICK or FULL);
    `roi_fraction`: the share of each request's scans the simulated radiologist draws an ROI on
    (OracleAnnotator's rule), in every arm alike."""
    console = console or Console()
    seed_list = list(range(first_seed, first_seed + seeds))
    budget = budget or (QUICK if quick else FULL)
    arms = arms or (QUICK_ARMS if quick else ARMS)
    base = preset("demo")
    regime = regime or (Regime() if shortcut else Regime(tag_agreement=1 / NUM_CLASSES))
    data_name = regime.describe(NUM_CLASSES)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    console.rule("xgal demo")
    console.print(
        f"{data_name}; budget: {budget.initial} initial + {budget.rounds} x {budget.per_round} acquired "
        f"from a pool of {budget.pool}; test split {budget.test}; {budget.epochs} epochs per round; "
        f"arms: {', '.join(a.name for a in arms)}; {roles_text(seed_list)}; "
        f"initial set: {INITIAL_WORDS[initial_balance]}"
        + (f"; ROIs drawn on {roi_fraction:.0%} of each request's scans" if roi_fraction < 1 else "")
    )
    all_results: dict[int, dict[str, list[RoundRecord]]] = {}
    overlay_cams: dict[str, np.ndarray] = {}
    overlay_data: dict[str, np.ndarray] = {}
    for seed in seed_list:
        data = out_dir / regime.folder(seed, shortcut, NUM_CLASSES)
        pool = _pool(data / "pool-train", budget.pool, seed, "train", regime)
        test = _pool(data / "pool-test", budget.test, seed, "test", regime)
        if seed == first_seed:
            overlay_data = test.read(0, OVERLAY_IMAGES, ("images", "rois", "labels"))
        server = RunningServer(ServerConfig(data_root=data, model_repo=data / "models", port=0))
        console.print(f"seed {seed}: scorer on {server.address}; pools in {data}")
        results: dict[str, list[RoundRecord]] = {}
        # Every arm trains the same network: one trace serves all their exports (one per number
        # of views: an uncertainty over views scores flipped copies too).
        exporters = {
            (views, head): ScoringGraphExporter(
                base.layer,
                image_shape=pool.image_shape,
                pixel_dtype=pool.pixel_dtype,
                class_names=pool.class_names,
                views=views,
            )
            for views in (1, MAX_VIEWS)
            for head in {a.roi_head for a in arms}
        }
        try:
            with ScorerClient(server.address) as client:
                for arm in arms:
                    config = replace(
                        base,
                        initial=budget.initial,
                        per_round=budget.per_round,
                        rounds=budget.rounds,
                        acquisition=arm.acquisition,
                        seed=seed,
                        cold_start=arm.cold_start,
                        roi_head=arm.roi_head,
                        initial_balance=initial_balance,
                        train=replace(base.train, epochs=budget.epochs, alpha=arm.alpha),
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
                        OracleAnnotator(pool, roi_fraction),
                        data / "runs" / arm.name,
                        model_name=arm.name,
                        log=on_round,
                        exporter=exporters[config.views, arm.roi_head],
                    )
                    results[arm.name] = loop.run()
        finally:
            server.stop(grace=5)
        all_results[seed] = results
        for table in round_tables(seed, results):
            console.print(table)

    summary = summarise(all_results)
    console.print(arms_table(summary))
    if summary["differences"]:
        console.print(differences_table(summary))
    doc = {
        "data": data_name,
        "shortcut": regime.tag_agreement > 1 / NUM_CLASSES + 1e-9 and regime.tag_fraction > 0,
        "regime": asdict(regime),
        "budget": asdict(budget),
        "initial_balance": initial_balance,  # none: drawn without the labels; oracle: stratified
        # ROIs drawn on the first ⌈f·n⌉ scans of each request (rank order), f = roi_fraction
        "roi_fraction": roi_fraction,
        "train": asdict(replace(base.train, epochs=budget.epochs)),
        "arms": [{**asdict(a), "acquisition": asdict(a.acquisition)} for a in arms],
        "seeds": list(all_results),
        # development: for choosing; held-out: for claims (xgal/demo/seeds.py, docs/evidence.md)
        "seed_roles": {str(s): seed_role(s) for s in all_results},
        "seeds_text": roles_text(list(all_results)),
        "rounds": {
            str(seed): {a: [asdict(r) for r in recs] for a, recs in res.items()}
            for seed, res in all_results.items()
        },
        "summary": summary,
        "seconds": time.perf_counter() - t0,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    plot_curves(all_results, out_dir / "learning_curves.png", data_name)
    if overlay_cams:
        ordered = dict(sorted(overlay_cams.items()))
        plot_overlays(overlay_data["images"], overlay_data["rois"], ordered, out_dir / "cam_overlays.png")
    console.print(
        f"wrote {out_dir / 'results.json'}, {out_dir / 'learning_curves.png'}, "
        f"{out_dir / 'cam_overlays.png'} in {time.perf_counter() - t0:.0f} s"
    )
    return doc
