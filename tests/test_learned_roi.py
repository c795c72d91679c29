"""The learned ROI (issue 26, part 3): a head trained only on the ROIs radiologists drew, exported
inside the scoring graph as a soft map with a threshold in the metadata, equal to eager PyTorch,
and kept by the INT8 and FP16 conversions."""

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from xgal.core.acquisition import AcquisitionConfig
from xgal.core.contract import LEARNED_ROI_OUTPUTS, NotAScoringGraphError, read_metadata
from xgal.core.errors import InvalidArgument
from xgal.core.masks import roi_present
from xgal.core.ranking import ranking_agreement
from xgal.export import ScoringGraphExporter, export_scoring_graph
from xgal.loop.config import LoopConfig
from xgal.pool.synth import synth_pool
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.scorer.pipeline import score_pool
from xgal.scorer.precision import half_scoring_graph, quantize_scoring_graph
from xgal.train.fit import TrainConfig, to_input, train_classifier
from xgal.train.nets import build_model, default_target_layer
from xgal.train.roi_loss import mask_dice, roi_loss

SIZE = 32
LAYER = default_target_layer("small_cnn")


def _head_model(kind: str, images: np.ndarray, seed: int = 0, spread: float = 1.0) -> torch.nn.Module:
    """An untrained model whose head's map is above 0.5 on about half the pixels of `images`, so
    masks of every size (a trained head is not needed for the graph to equal eager PyTorch)."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", "linear", 3, in_channels=1, roi_head=kind).eval()
    last = model.roi_head.out if kind == "shared" else model.roi_head.body[-1]
    with torch.no_grad():
        last.weight *= spread  # an untrained map is nearly flat: spread, few pixels lie near 0.5
        _, logits = model.forward_with_roi(to_input(images, 255.0))
        last.bias -= logits.median() + 0.05  # off the median: no pixel lands exactly on 0.5
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    scans = synth_pool(root / "scans", 96, image_size=SIZE, channels=1, split="test")
    # A trained head (a few seconds): an untrained one's map is nearly flat, so the reduced
    # precisions' agreement would measure ties at the threshold, not rounding.
    train = synth_pool(root / "train", 128, image_size=SIZE, channels=1, seed=1).read(
        0, 128, ("images", "rois", "labels")
    )
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1, roi_head="shared")
    x, y, rois = (
        to_input(train["images"], 255.0),
        torch.from_numpy(train["labels"]).long(),
        torch.from_numpy(train["rois"]),
    )
    train_classifier(model, x, y, TrainConfig(steps=40, schedule="cosine"), roi=rois, target_layer=LAYER)
    # One exporter for every shared-head graph here: a trace takes seconds, a refill does not.
    exporter = ScoringGraphExporter(LAYER, image_shape=(1, SIZE, SIZE))
    fp32 = exporter.export(model, root / "fp32.onnx")
    return SimpleNamespace(root=root, scans=scans, model=model, fp32=fp32, exporter=exporter)


def test_the_head_learns_only_from_scans_with_an_roi():
    logits = torch.zeros(4, 8, 8, requires_grad=True)
    roi = torch.zeros(4, 8, 8, dtype=torch.uint8)
    roi[1, 2:5, 2:5] = 1
    roi[3, 0:3, 4:8] = 1
    roi_loss(logits, roi).backward()
    assert logits.grad is not None
    assert logits.grad[[0, 2]].abs().sum() == 0 and logits.grad[[1, 3]].abs().sum() > 0
    # Trained on labelled scans none of which has an ROI, the head does not move at all.
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, SIZE, SIZE), torch.arange(16) % 3
    for drawn, moved in ((False, False), (True, True)):
        model = build_model("small_cnn", "linear", 3, in_channels=1, roi_head="beside")
        before = [p.detach().clone() for p in model.roi_head.parameters()]
        rois = torch.zeros(16, SIZE, SIZE, dtype=torch.uint8)
        if drawn:
            rois[::2, 8:20, 8:20] = 1
        history = train_classifier(
            model, x, y, TrainConfig(steps=3, batch_size=8, alpha=0, weight_decay=0), roi=rois
        )
        after = list(model.roi_head.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)) is moved
        assert bool(history[-1]["roi_loss"] > 0) is drawn


def test_mask_dice():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 8 and 4 pixels, 4 shared
    a[1, :2] = True  # against nothing
    np.testing.assert_allclose(mask_dice(a, b), [8 / 12, 0.0, 1.0])


def test_an_roi_is_any_pixel_set_and_the_learned_roi_stands_in_where_none_is():
    rois = np.zeros((3, 4, 4), np.uint8)
    rois[1, 3, 3] = 1
    assert roi_present(rois).tolist() == [False, True, False]
    assert roi_present(np.zeros((2, 0, 0), bool)).tolist() == [False, False]
    assert AcquisitionConfig(roi="expert-else-learned").roi.learned_rows(rois).tolist() == [True, False, True]
    assert AcquisitionConfig(roi="learned").roi.learned_rows(rois).all()
    # Without a head there is nothing to stand in: the error names every head there is.
    with pytest.raises(InvalidArgument, match=r"--roi-head shared \| shared-detached \| beside"):
        LoopConfig(acquisition=AcquisitionConfig(roi="learned"))


@pytest.mark.parametrize("kind", ["shared", "beside"])
def test_graph_matches_eager_reference(world, kind, tmp_path):
    batch = world.scans.read(0, 24)
    model = _head_model(kind, batch["images"], seed=3, spread=20)
    if kind == "shared":
        path = world.exporter.export(model, tmp_path / "g.onnx")
    else:
        path = export_scoring_graph(model, LAYER, tmp_path / "g.onnx", image_shape=(1, SIZE, SIZE))
    ref = TorchReferenceEngine(model, LAYER, image_shape=(1, SIZE, SIZE))
    want = ref.run(batch["images"], batch["rois"], want_learned=True, want_roi_map=True)
    got = OnnxRuntimeEngine(path).run(batch["images"], batch["rois"], want_learned=True, want_roi_map=True)
    np.testing.assert_allclose(got.roi_prob, want.roi_prob, rtol=0, atol=1e-5)
    # A pixel within the soft map's tolerance of the threshold may fall either side of it.
    near = (np.abs(want.roi_prob - 0.5) < 1e-5).sum(axis=(1, 2))
    assert np.all(np.abs(got.learned_area - want.learned_area) <= near)
    assert 0 < (want.learned_area > 0).sum() and (want.learned_area < SIZE * SIZE).all()
    exact = near == 0
    assert exact.mean() > 0.5, near
    np.testing.assert_allclose(got.learned_dice[exact], want.learned_dice[exact], rtol=0, atol=1e-4)
    info = read_metadata(onnx.load(path))
    assert (info.roi_head, info.roi_threshold, info.roi_sources) == (kind, 0.5, ("expert", "body", "learned"))


def test_threshold_is_the_exporters_and_is_recorded(world, tmp_path):
    batch = world.scans.read(0, 16)
    exporter = ScoringGraphExporter(LAYER, image_shape=(1, SIZE, SIZE), roi_threshold=0.3)
    graphs = {0.3: exporter.export(world.model, tmp_path / "t.onnx"), 0.5: world.fp32}
    areas = {}
    for threshold, path in graphs.items():
        engine = OnnxRuntimeEngine(path)
        assert engine.info.roi_threshold == threshold
        s = engine.run(batch["images"], batch["rois"], want_learned=True, want_roi_map=True)
        np.testing.assert_array_equal(s.learned_area, (s.roi_prob >= threshold).sum(axis=(1, 2)))
        areas[threshold] = s.learned_area
    assert (areas[0.3] >= areas[0.5]).all() and (areas[0.3] > areas[0.5]).any()


def test_a_graph_without_its_learned_outputs_is_refused(world, tmp_path):
    proto = onnx.load(world.fp32)
    kept = [o for o in proto.graph.output if o.name != LEARNED_ROI_OUTPUTS[1]]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, tmp_path / "cut.onnx")
    with pytest.raises(NotAScoringGraphError, match="learned_dice"):
        OnnxRuntimeEngine(tmp_path / "cut.onnx")


@pytest.mark.parametrize(("precision", "min_overlap"), [("int8", 0.75), ("fp16", 0.95)])
def test_reduced_precision_keeps_the_learned_roi(world, precision, min_overlap):
    out = world.root / f"{precision}.onnx"
    if precision == "int8":
        quantize_scoring_graph(world.fp32, world.scans, out, calibration=64)
    else:
        half_scoring_graph(world.fp32, out)
    engine = OnnxRuntimeEngine(out)
    assert engine.info.roi_head == "shared" and engine.info.precision == precision
    config = AcquisitionConfig(roi="learned")
    ref = score_pool(OnnxRuntimeEngine(world.fp32), world.scans, config, 20, return_all=True).all
    low = score_pool(engine, world.scans, config, 20, return_all=True).all
    agree = ranking_agreement(ref.ids, ref.score, low.ids, low.score, 20)
    assert agree["topk_overlap"] >= min_overlap, agree
    same = np.mean(ref.roi_source[np.argsort(ref.ids)] == low.roi_source[np.argsort(low.ids)])
    assert same >= 0.95 and (ref.roi_source == 3).mean() > 0.5


def test_a_detached_head_leaves_the_classifier_as_trained_without_it():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, SIZE, SIZE), torch.arange(16) % 3
    rois = torch.zeros(16, SIZE, SIZE, dtype=torch.uint8)
    rois[:, 8:20, 8:20] = 1
    trained = {}
    for kind in ("none", "shared-detached", "shared"):
        torch.manual_seed(0)
        model = build_model("small_cnn", "linear", 3, in_channels=1, roi_head=kind)
        train_classifier(
            model, x, y, TrainConfig(steps=4, batch_size=8, alpha=0.1), roi=rois, target_layer=LAYER
        )
        trained[kind] = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_head.")}
    same = [torch.equal(trained["none"][k], trained["shared-detached"][k]) for k in trained["none"]]
    assert all(same)
    assert not all(torch.equal(trained["none"][k], trained["shared"][k]) for k in trained["none"])


@pytest.mark.parametrize(("peak", "usable"), [(1.0000001, True), (1.5, False), (float("nan"), False)])
def test_publishing_checks_the_learned_map_within_float_rounding(world, peak, usable):
    """A sigmoid computed in float32 can round a hair past 1 (seen: 1.0000001); a map past that,
    or NaN, is refused at publish and load."""
    engine = OnnxRuntimeEngine(world.fp32)
    run = engine.run

    def with_peak(*args, **kwargs):
        out = run(*args, **kwargs)
        if out.roi_prob is not None:
            out.roi_prob[0, 0, 0] = peak
        return out

    engine.run = with_peak
    if usable:
        engine.self_check()
    else:
        with pytest.raises(NotAScoringGraphError, match="roi_prob is not"):
            engine.self_check()
