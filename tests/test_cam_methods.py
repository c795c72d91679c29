"""Grad-CAM, Grad-CAM++, HiResCAM and LayerCAM inside the exported scoring graph, each against
the eager reference engine (which computes the maps with its own NumPy code): CAM and Dice
within 1e-4, and the choice recorded in the graph's metadata."""

import numpy as np
import pytest
import torch

from xgal.core.contract import CAM_METHODS
from xgal.export import ScoringGraphExporter
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.train.nets import build_model

LAYER = "features.stage4.0"


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 1, 32, 32), dtype=np.uint8)
    rois = np.zeros((12, 32, 32), np.uint8)
    for i in range(12):
        y, x = rng.integers(0, 20, 2)
        rois[i, y : y + 12, x : x + 10] = 1
    return images, rois


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small_cnn", "mlp", 3, in_channels=1).eval()


@pytest.fixture(scope="module")
def cams(model, batch, tmp_path_factory):
    """Each method's (graph, reference) maps and Dice for the batch, predicted and given classes."""
    root = tmp_path_factory.mktemp("cams")
    images, rois = batch
    target = np.array([-1, 0, 1, 2] * 3, dtype=np.int64)
    out = {}
    for method in CAM_METHODS:
        exporter = ScoringGraphExporter(LAYER, image_shape=(1, 32, 32), cam_method=method)
        path = exporter.export(model, root / f"{method}.onnx")
        graph = OnnxRuntimeEngine(path)
        assert graph.info.cam_method == method
        ref = TorchReferenceEngine(model, LAYER, image_shape=(1, 32, 32), cam_method=method)
        out[method] = (
            graph.run(images, rois, target, want_cam=True),
            ref.run(images, rois, target, want_cam=True),
        )
    return out


@pytest.mark.parametrize("method", CAM_METHODS)
def test_each_cam_method_in_the_graph_matches_the_eager_reference(cams, method):
    got, want = cams[method]
    scale = max(1.0, float(np.abs(want.cam).max()))
    assert np.abs(got.cam - want.cam).max() <= 1e-4 * scale
    assert np.abs(got.dice - want.dice).max() <= 1e-4
    np.testing.assert_allclose(got.cam_range, want.cam_range, rtol=1e-4, atol=1e-6)


def test_the_methods_make_different_maps(cams):
    # Parity would say little if every method computed the same map.
    maps = {m: cams[m][1].cam for m in CAM_METHODS}
    for a in CAM_METHODS:
        for b in CAM_METHODS:
            if a < b:
                assert not np.allclose(maps[a], maps[b], rtol=1e-3), (a, b)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="cam_method must be one of"):
        ScoringGraphExporter(LAYER, image_shape=(1, 32, 32), cam_method="scorecam")
