"""The exported scoring graph (ONNX Runtime, CPU) against the eager PyTorch reference.

Each case exports a network x head with its Grad-CAM layer (including mid-block layers, so the
gradient goes back through further convolutions, BatchNorm, residual additions and DenseNet
concatenations) and compares probabilities, the normalised CAM and the Dice on a batch whose
predictions span several classes, with the predicted class and with given target classes.
"""

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, blob_images, box_rois, mix_predictions, normalised_upsampled

from xgal.export import export_scoring_graph
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine
from xgal.train.nets import build_model

CASES = [
    # arch, head, target layer, channels, size, pixel dtype
    ("small_cnn", "linear", "features.stage4.0", 1, 64, "uint8"),
    ("small_cnn", "mlp", "features.stage3.0", 1, 48, "uint16"),  # convs (one strided) follow
    ("small_cnn", "prototypical", "features.stage3", 1, 64, "uint8"),
    ("resnet18", "linear", "features.layer4.0.conv1", 3, 64, "uint8"),  # mid-block
    ("resnet18", "mlp", "features.layer4.1.conv2", 3, 64, "uint8"),
    ("resnet18", "prototypical", "features.layer4", 3, 64, "uint8"),
    # DenseNet-121 once, at a layer inside its last block (concatenations and later layers follow
    # it): each export takes over a minute on CI's 2 cores, and the heads are checked above.
    ("densenet121", "mlp", "features.denseblock4.denselayer12.conv2", 3, 64, "uint8"),
]
N = 8


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2].split('.', 1)[1]}")
def exported(request, tmp_path_factory):
    arch, head, layer, c, size, dtype = request.param
    torch.manual_seed(0)
    model = build_model(arch, head, 3, in_channels=c).eval()
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else (None, None)
    images = blob_images(N, c, size, seed=1, dtype=dtype)
    rois = box_rois(N, size, seed=2, empty=(3,))
    ref = TorchReferenceEngine(
        model, layer, image_shape=(c, size, size), pixel_dtype=dtype, mean=mean, std=std
    )
    scale = 255.0 if dtype == "uint8" else 65535.0
    mix_predictions(model, (torch.from_numpy(images.astype(np.float32)) / scale - ref.mean) / ref.std)
    path = export_scoring_graph(
        model,
        layer,
        tmp_path_factory.mktemp("graphs") / f"{arch}-{head}.onnx",
        image_shape=(c, size, size),
        pixel_dtype=dtype,
        mean=mean,
        std=std,
    )
    return OnnxRuntimeEngine(path), ref, images, rois


@pytest.mark.parametrize("target", [None, "given"])
def test_graph_matches_eager_reference(exported, target):
    engine, ref, images, rois = exported
    tgt = None if target is None else np.array([0, 1, 2, 0, 1, 2, -1, 2], dtype=np.int64)
    got = engine.run(images, rois, tgt, want_cam=True)
    want = ref.run(images, rois, tgt, want_cam=True)
    size = images.shape[-2:]

    assert len(np.unique(want.probs.argmax(1))) >= 2, "the batch should span several predicted classes"
    flat = np.ptp(want.cam.reshape(N, -1), axis=1) < 1e-8
    assert flat.sum() <= N - 3, "CAMs should have structure, or the comparison proves little"

    np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.entropy, want.entropy, rtol=0, atol=1e-5)
    cam_diff = np.abs(normalised_upsampled(got.cam, size) - normalised_upsampled(want.cam, size)).max()
    assert cam_diff <= 1e-4
    np.testing.assert_allclose(got.dice, want.dice, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(got.roi_area, rois.reshape(N, -1).sum(1))
    assert got.dice[3] == 0.0 and got.roi_area[3] == 0.0  # the sample without an ROI


def test_dynamic_batch_and_metadata(exported):
    engine, _, images, rois = exported
    one = engine.run(images[:1], rois[:1])
    many = engine.run(images, rois)
    np.testing.assert_allclose(one.dice, many.dice[:1], atol=1e-6)
    info = engine.info
    assert info.num_classes == 3 and info.input_shape == images.shape[1:]
    assert len(info.graph_sha256) == 64
