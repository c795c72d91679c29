"""`xgal demo`: the whole path on built-in synthetic data.

synthetic pool -> a few labels -> train a small CNN -> export the scoring graph (Grad-CAM
inside) -> start a scorer on 127.0.0.1 -> publish the graph over gRPC -> rank the unlabelled
pool by uncertainty + CAM/ROI misalignment over gRPC.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from xgal.client import ScorerClient
from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool
from xgal.scorer import report
from xgal.scorer.acquisition import AcquisitionConfig
from xgal.scorer.pipeline import ScoreResult
from xgal.scorer.server import RunningServer, ServerConfig
from xgal.trainer.export import export_scoring_graph
from xgal.trainer.nets import build_model, default_target_layer
from xgal.trainer.train import TrainConfig, predict, to_input, train_classifier


def stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices, as equal per class as possible, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per, strict=True)]
    return np.sort(np.concatenate(picks))


def _pool(path: Path, size: int, seed: int, split: str) -> Pool:
    if (path / "manifest.json").is_file():
        pool = Pool(path)
        if pool.count == size and f"seed={seed}," in pool.description:
            return pool
    return synth_pool(path, size, seed=seed, split=split, overwrite=True)


def run_demo(out_dir: Path, *, quick: bool = False, seed: int = 0, console: Console | None = None) -> dict:
    console = console or Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    n_pool, n_test, n_labelled, epochs = (600, 150, 45, 40) if quick else (3000, 300, 60, 40)
    t0 = time.perf_counter()
    console.rule("xgal demo")
    train_pool = _pool(out_dir / "pool-train", n_pool, seed, "train")
    test_pool = _pool(out_dir / "pool-test", n_test, seed, "test")
    console.print(f"pools: {train_pool}\n       {test_pool}")

    everything = train_pool.read(0, train_pool.count, ("ids", "images", "labels"))
    labelled = stratified(everything["labels"], n_labelled, seed)
    x = to_input(everything["images"][labelled], 255.0)
    y = torch.from_numpy(everything["labels"][labelled])
    torch.manual_seed(seed)
    model = build_model("small_cnn", "linear", len(train_pool.class_names), in_channels=1)
    console.print(f"training small_cnn on {len(labelled)} labelled scans for {epochs} epochs ...")
    history = train_classifier(model, x, y, TrainConfig(epochs=epochs, seed=seed))
    test = test_pool.read(0, test_pool.count, ("images", "labels"))
    accuracy = float((predict(model, to_input(test["images"], 255.0)) == test["labels"]).mean())
    console.print(f"final training loss {history[-1]:.3f}; test accuracy {accuracy:.3f}")

    model_path = export_scoring_graph(
        model,
        default_target_layer("small_cnn"),
        out_dir / "model-round0.onnx",
        image_shape=train_pool.image_shape,
        class_names=train_pool.class_names,
    )
    console.print(
        f"exported scoring graph with Grad-CAM at {default_target_layer('small_cnn')}: {model_path}"
    )

    config = AcquisitionConfig()
    # The scorer runs as a service, as it does for a real trainer: a replica on 127.0.0.1 that
    # reads pools under out_dir and keeps published models in out_dir/models.
    server = RunningServer(ServerConfig(data_root=out_dir, model_repo=out_dir / "models", port=0))
    try:
        with ScorerClient(server.address) as client:
            info = client.publish_model(model_path, "demo")
            console.print(f"published to the scorer at {server.address}: {info.name} v{info.version}")
            scores = client.score_pool(
                train_pool.path.name,
                model="demo",
                top_k=20,
                exclude_ids=everything["ids"][labelled].tolist(),
                return_all=True,
                strategy=config.strategy,
                lam=config.lam,
            )
    finally:
        server.stop(grace=5)
    result = ScoreResult(
        scores.top, scores.all, scores.scored, scores.excluded, scores.seconds, scores.class_names
    )
    report.print_table(
        result, f"the 20 scans xgal would send to the annotator next (λ={config.lam})", console
    )
    assert result.all is not None
    doc = report.to_dict(
        result,
        {
            "model": str(model_path),
            "pool": str(train_pool.path),
            "scorer": server.address,
            "model_version": info.version,
            "labelled": len(labelled),
            "test_accuracy": accuracy,
        },
    )
    doc["mean_dice_unlabelled"] = float(1 - result.all.m.mean())
    (out_dir / "ranking.json").write_text(json.dumps(doc, indent=1))
    console.print(
        f"mean CAM-ROI Dice over the unlabelled pool: {doc['mean_dice_unlabelled']:.3f}; "
        f"results in {out_dir / 'ranking.json'}; {time.perf_counter() - t0:.0f} s in all"
    )
    return doc
