"""`ScoringGraphExporter` traces a network once and refills the graph with each round's weights:
the result must be the graph a fresh export makes, byte for byte in its graph and equal in what
it computes."""

import numpy as np
import pytest
import torch
from helpers import blob_images, box_rois

from xgal.export import ScoringGraphExporter, export_scoring_graph
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.train.nets import build_model

CASES = [
    ("small_cnn", "linear", "features.stage4.0"),
    ("small_cnn", "prototypical", "features.stage3"),  # prototypes are a buffer
]


def _perturb(model):
    """What a round of training does to a model: every weight and BatchNorm statistic moves."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for b in model.buffers():
            if b.is_floating_point():
                b.mul_(1.25)


@pytest.mark.parametrize("arch,head,layer", CASES, ids=[f"{a}-{h}" for a, h, _ in CASES])
def test_refilled_graph_equals_a_fresh_export(tmp_path, arch, head, layer):
    torch.manual_seed(0)
    model = build_model(arch, head, 3, in_channels=1)
    exporter = ScoringGraphExporter(layer, image_shape=(1, 32, 32), class_names=["a", "b", "c"])
    first = OnnxRuntimeEngine(exporter.export(model, tmp_path / "r0.onnx"))
    _perturb(model)
    # Training hands models back contiguous, but a user's may be channels_last: same graph.
    model.to(memory_format=torch.channels_last)
    reused = OnnxRuntimeEngine(exporter.export(model, tmp_path / "r1.onnx", round_index=1))
    fresh = OnnxRuntimeEngine(
        export_scoring_graph(
            model, layer, tmp_path / "fresh.onnx", image_shape=(1, 32, 32), class_names=["a", "b", "c"]
        )
    )
    assert exporter.traces == 1
    assert reused.info.graph_sha256 == fresh.info.graph_sha256
    assert reused.info.round_index == 1 and reused.info.class_names == ("a", "b", "c")

    images, rois = blob_images(8, 1, 32, seed=3), box_rois(8, 32, seed=4)
    a = reused.run(images, rois, want_cam=True)
    b = fresh.run(images, rois, want_cam=True)
    for name in ("probs", "entropy", "dice", "cam"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # The weights really were swapped: the first round's graph scores differently.
    assert np.abs(first.run(images, rois).probs - a.probs).max() > 1e-3


def test_another_architecture_is_traced_anew(tmp_path):
    exporter = ScoringGraphExporter("features.stage4.0", image_shape=(1, 32, 32))
    torch.manual_seed(0)
    exporter.export(build_model("small_cnn", "linear", 3, in_channels=1), tmp_path / "a.onnx")
    four = build_model("small_cnn", "linear", 4, in_channels=1)
    engine = OnnxRuntimeEngine(exporter.export(four, tmp_path / "b.onnx"))
    assert exporter.traces == 2
    assert engine.info.num_classes == 4
