"""Uncertainty over flipped views, inside the exported graph: `view_probs` equals the eager
network on flipped images, BALD and the entropy of the mean follow their formulas, and a graph
exported without views refuses them by name."""

import numpy as np
import pytest
import torch
from helpers import blob_images, box_rois

from xgal.core.acquisition import AcquisitionConfig, Uncertainty, uncertainty
from xgal.core.errors import InvalidArgument
from xgal.export import export_scoring_graph
from xgal.loop import LoopConfig
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.scorer.pipeline import score_pool
from xgal.train.nets import build_model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    with torch.no_grad():  # an untrained head barely tells one image from another: sharpen it
        model.head.fc.weight *= 200.0
    kw = {"image_shape": (1, 32, 32)}
    views = export_scoring_graph(model, "features.stage4.0", root / "views.onnx", views=4, **kw)
    plain = export_scoring_graph(model, "features.stage4.0", root / "plain.onnx", **kw)
    pool = synth_pool(root / "pool", 120, seed=0, image_size=32, shard_size=64)
    return model, views, plain, pool


def test_view_probs_equal_the_network_on_flipped_images(graphs):
    model, views, _, _ = graphs
    images, rois = blob_images(10, 1, 32, seed=1), box_rois(10, 32, seed=1)
    got = OnnxRuntimeEngine(views).run(images, rois, want_views=True)
    ref = TorchReferenceEngine(model, "features.stage4.0", image_shape=(1, 32, 32)).run(
        images, rois, want_views=True
    )
    assert got.view_probs is not None and got.view_probs.shape == (10, 4, 3)
    np.testing.assert_allclose(got.view_probs, ref.view_probs, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got.view_probs[:, 0], got.probs)  # view 0 is the image itself
    # The flips change the prediction: otherwise BALD would be zero and measure nothing.
    assert np.abs(got.view_probs[:, 1:] - got.view_probs[:, :1]).max() > 1e-3


def test_bald_and_the_entropy_of_the_mean():
    agree = np.array([[[0.7, 0.2, 0.1]] * 4])  # the views agree: BALD 0
    disagree = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    vp = np.concatenate([agree, disagree])
    probs = vp[:, 0]
    ent = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    bald = uncertainty(probs, ent, Uncertainty.BALD, view_probs=vp)
    np.testing.assert_allclose(bald, [0.0, np.log(2)], atol=1e-9)  # confident views that disagree
    mean_h = uncertainty(probs, ent, Uncertainty.MEAN_ENTROPY, view_probs=vp)
    np.testing.assert_allclose(mean_h, [ent[0], np.log(2)], atol=1e-9)
    with pytest.raises(InvalidArgument, match="several views"):
        uncertainty(probs, ent, Uncertainty.BALD)


def test_pools_rank_by_bald_and_a_graph_without_views_refuses(graphs):
    _, views, plain, pool = graphs
    config = AcquisitionConfig(strategy="uncertainty", uncertainty="bald")
    got = score_pool(OnnxRuntimeEngine(views), pool, config, 10, return_all=True)
    assert got.all is not None
    everything = got.all
    d = pool.read(0, pool.count)
    vp = OnnxRuntimeEngine(views).run(d["images"], d["rois"], want_views=True)
    want = uncertainty(vp.probs, vp.entropy, Uncertainty.BALD, view_probs=vp.view_probs)
    np.testing.assert_allclose(everything.u, want, rtol=0, atol=1e-12)
    assert got.top.ids.tolist() == everything.ids[np.lexsort((everything.ids, -want))][:10].tolist()
    with pytest.raises(InvalidArgument, match="export it with views"):
        score_pool(OnnxRuntimeEngine(plain), pool, config, 10)


def test_the_loop_exports_views_only_for_an_uncertainty_over_views():
    assert LoopConfig().views == 1
    assert LoopConfig(acquisition=AcquisitionConfig(uncertainty="bald")).views == 4
    assert LoopConfig(acquisition=AcquisitionConfig(uncertainty="mean_entropy")).views == 4
