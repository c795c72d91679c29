"""Scans whose Grad-CAM carries no evidence: found by the engines from the map's range, and
scored by the named policy (the authors' M = 1, or U alone), the same on every path."""

import numpy as np
import pytest
import torch

from xgal.core.acquisition import AcquisitionConfig, criteria
from xgal.export import export_scoring_graph
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.train.nets import build_model

P = np.array([[0.6, 0.3, 0.1], [0.4, 0.3, 0.3], [0.9, 0.05, 0.05]])
ENT = -(P * np.log(P)).sum(1)
IDS = np.array(["a", "b", "c"])
# "b" has a flat map; all three have an ROI and the same Dice.
RANGE = np.array([0.3, 0.0, 0.2])
DICE = np.array([0.2, 0.0, 0.2])


def test_the_authors_policy_scores_a_flat_map_as_fully_misaligned():
    c = criteria(P, ENT, DICE, np.ones(3), IDS, AcquisitionConfig(), cam_range=RANGE)
    assert c.flat.tolist() == [False, True, False]
    np.testing.assert_allclose(c.m, [0.8, 1.0, 0.8])
    np.testing.assert_allclose(c.score, 0.3 * ENT + 0.7 * c.m)


def test_ignore_scores_a_flat_map_on_uncertainty_alone():
    c = criteria(P, ENT, DICE, np.ones(3), IDS, AcquisitionConfig(flat_cam="ignore"), cam_range=RANGE)
    np.testing.assert_allclose(c.score, [0.3 * ENT[0] + 0.7 * 0.8, ENT[1], 0.3 * ENT[2] + 0.7 * 0.8])
    # Without a measured range nothing is taken as flat.
    plain = criteria(P, ENT, DICE, np.ones(3), IDS, AcquisitionConfig(flat_cam="ignore"))
    assert not plain.flat.any()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    torch.manual_seed(0)
    live = build_model("small_cnn", "linear", 3, in_channels=1)
    dead = build_model("small_cnn", "linear", 3, in_channels=1)
    with torch.no_grad():  # no weight: no location raises any class score, every map is flat
        dead.head.fc.weight.zero_()
    out = {}
    for name, model in (("live", live), ("dead", dead)):
        model.eval()
        out[name] = (
            export_scoring_graph(model, "features.stage4.0", root / f"{name}.onnx", image_shape=(1, 32, 32)),
            model,
        )
    return out


@pytest.mark.parametrize("engine", ["ort", "torch"])
def test_engines_measure_each_maps_range(graphs, engine):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 32, 32), dtype=np.uint8)
    rois = np.zeros((16, 32, 32), np.uint8)
    rois[:, 8:20, 8:20] = 1
    ranges = {}
    for name, (path, model) in graphs.items():
        if engine == "ort":
            eng = OnnxRuntimeEngine(path)
        else:
            eng = TorchReferenceEngine(model, "features.stage4.0", image_shape=(1, 32, 32))
        s = eng.run(images, rois, want_cam=True)
        np.testing.assert_allclose(s.cam_range, s.cam.max(axis=(1, 2)) - s.cam.min(axis=(1, 2)), rtol=1e-5)
        ranges[name] = s.cam_range
    assert np.all(ranges["dead"] == 0)
    assert np.all(ranges["live"] > 1e-4)


def test_the_policy_and_the_flag_survive_the_wire():
    from xgal.core.acquisition import FlatCam
    from xgal.core.ranking import scored_batch
    from xgal.core.wire import (
        acquisition_from_proto,
        acquisition_to_proto,
        ranked_from_proto,
        ranked_to_proto,
    )

    for policy in FlatCam:
        cfg = AcquisitionConfig(flat_cam=policy)
        assert acquisition_from_proto(acquisition_to_proto(cfg)) == cfg
    rows, _ = scored_batch(IDS, P, ENT, DICE, np.ones(3), AcquisitionConfig(), cam_range=RANGE)
    assert ranked_from_proto(ranked_to_proto(rows), 3).flat.tolist() == [False, True, False]
