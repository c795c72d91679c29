"""Models as users write them, beyond xgal's own networks, exported with their gradient path.

Each zoo model puts a different operator between its Grad-CAM layer and the class scores (so
the gradient goes back through it): prototypes scored with `torch.cdist`, GroupNorm,
LayerNorm, GELU, SiLU, depthwise and dilated convolutions, max and average pooling,
squeeze-and-excitation gating, a residual block, transposed convolutions. Each graph must agree
with the eager reference on a real batch, with the predicted and with given classes, or be
refused at export with an error naming the operator. The decompositions the trace relies on are
also checked directly against torch's kernels, over the arguments the zoo does not reach.
"""

import copy
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import blob_images, box_rois, normalised_upsampled
from torch import nn

from xgal.core.errors import InvalidArgument
from xgal.export import ScoringGraphExporter
from xgal.export.decompositions import tracing_decompositions
from xgal.scorer.engines.ort import OnnxRuntimeEngine
from xgal.scorer.engines.torch_ref import TorchReferenceEngine

N, SIZE, K = 8, 32, 3
SHAPE = (1, SIZE, SIZE)
aten = torch.ops.aten


def conv(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, groups=groups)


class Pooled(nn.Module):
    """features -> global average -> neck -> linear classifier `fc`."""

    def __init__(self, features: nn.Module, width: int, neck: nn.Module | None = None) -> None:
        super().__init__()
        self.features = features
        self.neck = neck or nn.Identity()
        self.fc = nn.Linear(width, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.neck(self.features(x).mean((2, 3))))


class CdistPrototypes(nn.Module):
    """The authors' head as they wrote it: class scores are -cdist(embedding, prototypes), the
    nearest of `per_class` prototypes scoring for each class."""

    def __init__(self, per_class: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.per_class = per_class
        self.features = nn.Sequential(
            conv(1, 8), norm(8), nn.ReLU(), conv(8, 16, stride=2), norm(16), nn.ReLU()
        )
        self.proj = nn.Linear(16, 16)
        self.prototypes = nn.Parameter(torch.randn(K * per_class, 16))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(self.embed(x), self.prototypes)
        return -dist if self.per_class == 1 else -dist.view(-1, K, self.per_class).amin(-1)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over each pixel's channels, as ConvNeXt applies it to feature maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 convolution, channel LayerNorm, inverted bottleneck with GELU, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = conv(c, c, k=7, groups=c)
        self.norm = ChannelLayerNorm(c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.project = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.gelu(self.expand(self.norm(self.dwconv(x)))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(x.mean((2, 3), keepdim=True)))))


class MBConv(nn.Module):
    """EfficientNet's block: expansion, SiLU, a depthwise (here dilated) convolution,
    squeeze-and-excitation gating, projection, residual."""

    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c), nn.SiLU())
        self.depthwise = nn.Sequential(
            conv(2 * c, 2 * c, dilation=dilation, groups=2 * c), nn.BatchNorm2d(2 * c), nn.SiLU()
        )
        self.se = SqueezeExcite(2 * c)
        self.project = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class BasicBlock(nn.Module):
    """ResNet's basic block, written out as users do."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class AffineResample(nn.Module):
    """A spatial transformer's sampling step."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([[0.9, 0.1, 0.0], [-0.1, 0.9, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(self.theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)


def _pooled(*layers: nn.Module, width: int = 16, neck: nn.Module | None = None) -> Pooled:
    return Pooled(nn.Sequential(*layers), width, neck)


# A trace and an ONNX export take seconds each, so every model combines a few of the operators
# the way real architectures do; the tests of the decompositions against torch's kernels (at
# the end) tell them apart. name: (builder, Grad-CAM layer); the gradient goes back through
# everything after that layer.
ZOO = {
    # The method's authors' head: class scores are -cdist(embedding, prototypes).
    "cdist-prototypes": (lambda: CdistPrototypes(1, nn.BatchNorm2d), "features.0"),
    # Over 25 prototypes, cdist takes its matrix-product path (aten._euclidean_dist).
    "groupnorm-cdist-30-prototypes": (
        lambda: CdistPrototypes(10, lambda c: nn.GroupNorm(4, c)),
        "features.0",
    ),
    # LayerNorm, GELU, a depthwise convolution.
    "convnext": (
        lambda: _pooled(
            conv(1, 16),
            ConvNeXtBlock(16),
            *(ChannelLayerNorm(16), nn.Conv2d(16, 16, 2, stride=2)),  # ConvNeXt's downsampling
            neck=nn.LayerNorm(16),
        ),
        "features.0",
    ),
    # SiLU, a dilated depthwise convolution, squeeze-and-excitation gating.
    "efficientnet": (
        lambda: _pooled(conv(1, 16, stride=2), nn.BatchNorm2d(16), nn.SiLU(), MBConv(16, dilation=2)),
        "features.0",
    ),
    # The target is the first convolution of a residual block; max pooling follows it.
    "resnet-maxpool": (
        lambda: Pooled(
            nn.Sequential(
                OrderedDict(
                    stem=nn.Sequential(conv(1, 8), nn.BatchNorm2d(8), nn.ReLU()),
                    block1=BasicBlock(8, 8),
                    pool=nn.MaxPool2d(3, 2, 1),  # overlapping windows
                    head_pool=nn.AdaptiveMaxPool2d(1),
                )
            ),
            8,
        ),
        "features.block1.conv1",
    ),
    # Average pooling (as in DenseNet's transitions, and with uneven adaptive windows),
    # transposed convolutions, Mish.
    "hourglass": (
        lambda: _pooled(
            *(conv(1, 8), nn.Mish(), nn.AvgPool2d(2)),
            *(conv(8, 16), nn.Mish(), nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)),
            *(nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.Mish()),
            *(nn.ConvTranspose2d(8, 16, 3, stride=2, padding=1, output_padding=1, groups=2), nn.Mish()),
            nn.AdaptiveAvgPool2d(5),  # 36 -> 5: uneven windows
        ),
        "features.0",
    ),
}


def _trained_looking(model: nn.Module, seed: int) -> None:
    """Normalisation layers as training leaves them rather than as initialised (identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)


def _spread_predictions(model: nn.Module, x: torch.Tensor) -> None:
    """Make the batch span several predicted classes (an untrained model predicts one)."""
    with torch.no_grad():
        if isinstance(model, CdistPrototypes):
            emb = model.embed(x)
            centre = emb.mean(0, keepdim=True)
            # Each class's prototypes sit around one sample pushed out from the batch mean.
            anchors = (centre + 3.0 * (emb[:K] - centre)).repeat_interleave(model.per_class, 0)
            noise = torch.randn(anchors.shape, generator=torch.Generator().manual_seed(3))
            model.prototypes.copy_(anchors + 0.1 * noise * emb.std(0))
            return
        logits = model(x)
        model.fc.bias -= logits.mean(0)
        model.fc.bias += logits.std(0) * torch.linspace(-0.5, 0.5, K)


@pytest.fixture(scope="module", params=list(ZOO), ids=str)
def exported(request, tmp_path_factory):
    build, layer = ZOO[request.param]
    torch.manual_seed(0)
    model = build().eval()
    _trained_looking(model, seed=1)
    images = blob_images(N, 1, SIZE, seed=1)
    rois = box_rois(N, SIZE, seed=2, empty=(3,))
    _spread_predictions(model, torch.from_numpy(images.astype(np.float32)) / 255.0)
    ref = TorchReferenceEngine(model, layer, image_shape=SHAPE)

    # The graph is traced from another model of the architecture and refilled with this one's
    # weights, as in a loop's later rounds: the decompositions must leave no tensor constant
    # behind that would stop the refill.
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    exporter = ScoringGraphExporter(layer, image_shape=SHAPE)
    out = tmp_path_factory.mktemp(request.param)
    exporter.export(other, out / "other.onnx")
    path = exporter.export(model, out / "model.onnx")
    return OnnxRuntimeEngine(path), ref, images, rois, exporter


def zoo_differences(exported, target: np.ndarray | None) -> dict[str, float]:
    """Max abs differences of the exported graph against the eager reference."""
    engine, ref, images, rois, _ = exported
    got = engine.run(images, rois, target, want_cam=True)
    want = ref.run(images, rois, target, want_cam=True)
    assert len(np.unique(want.probs.argmax(1))) >= 2, "the batch should span several predicted classes"
    flat = np.ptp(want.cam.reshape(N, -1), axis=1) < 1e-8
    assert flat.sum() <= N - 3, "CAMs should have structure, or the comparison proves little"
    np.testing.assert_array_equal(got.roi_area, rois.reshape(N, -1).sum(1))
    size = images.shape[-2:]
    cams = normalised_upsampled(got.cam, size) - normalised_upsampled(want.cam, size)
    return {
        "probs": float(np.abs(got.probs - want.probs).max()),
        "entropy": float(np.abs(got.entropy - want.entropy).max()),
        "cam": float(np.abs(cams).max()),
        "dice": float(np.abs(got.dice - want.dice).max()),
    }


@pytest.mark.parametrize("target", ["predicted", "given"])
def test_zoo_model_matches_eager_reference(exported, target):
    tgt = None if target == "predicted" else np.array([0, 1, 2, 0, 1, 2, -1, 2], dtype=np.int64)
    diff = zoo_differences(exported, tgt)
    assert diff["probs"] <= 1e-5 and diff["entropy"] <= 1e-5, diff
    assert diff["cam"] <= 1e-4 and diff["dice"] <= 1e-4, diff


def test_zoo_graph_is_refilled_not_retraced(exported):
    assert exported[4].traces == 1


def test_operator_without_onnx_gradient_is_refused_by_name(tmp_path):
    # grid_sample's backward has neither an ONNX translation nor a torch decomposition.
    model = Pooled(nn.Sequential(conv(1, 8), nn.ReLU(), AffineResample(), conv(8, 16), nn.ReLU()), 16).eval()
    exporter = ScoringGraphExporter("features.0", image_shape=SHAPE)
    with pytest.raises(InvalidArgument, match=r"ATen operators? aten\.grid_sampler_2d_backward\b") as info:
        exporter.export(model, tmp_path / "m.onnx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


# The decompositions against torch's CPU kernels, over arguments the zoo does not reach.

TABLE = tracing_decompositions()


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, math.inf])
def test_cdist_decomposition_matches_kernel(p):
    x1, x2 = _randn(2, 5, 4, seed=1), _randn(1, 6, 4, seed=2)  # batch dimensions broadcast
    x2[0, 0] = x1[1, 2]  # a coincident pair, where the kernel's subgradient is zero
    x2[0, 1, 0] = x1[0, 3, 0]  # one equal coordinate, which p < 1 also zeroes
    dist = aten._cdist_forward(x1, x2, p, None)
    torch.testing.assert_close(TABLE[aten._cdist_forward.default](x1, x2, p, None), dist)
    grad = _randn(*dist.shape, seed=3)
    want = aten._cdist_backward(grad, x1.expand(2, 5, 4), x2.expand(2, 6, 4), p, dist)
    torch.testing.assert_close(TABLE[aten._cdist_backward.default](grad, x1, x2, p, dist), want)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups", "transposed", "output_padding"),
    [
        ([1, 1], [1, 1], [1, 1], 1, False, [0, 0]),
        ([2, 3], [1, 0], [1, 2], 2, False, [0, 0]),  # strided: sizes the forward dropped
        ([2, 2], [1, 1], [1, 1], 4, True, [1, 1]),
        ([3, 2], [0, 2], [2, 1], 2, True, [2, 1]),
    ],
)
def test_convolution_input_grad_matches_kernel(stride, padding, dilation, groups, transposed, output_padding):
    x = _randn(2, 4, 11, 10, seed=1)
    w = _randn(*((4, 8 // groups) if transposed else (8, 4 // groups)), 3, 3, seed=2)
    args = (stride, padding, dilation, transposed, output_padding, groups)
    grad = _randn(*aten.convolution(x, w, None, *args).shape, seed=3)
    want = aten.convolution_backward(grad, x, w, None, *args, [True, False, False])[0]
    got = TABLE[aten.convolution_backward.default](grad, x, w, None, *args, [True, False, False])[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "ceil_mode", "count_include_pad", "divisor"),
    [
        ((8, 8), [2], [], [0], False, True, None),
        ((9, 7), [3, 2], [2, 1], [1, 0], True, True, None),
        ((8, 7), [3], [2], [0], True, True, None),  # ceil_mode windows past the edge
        ((9, 7), [3, 3], [2, 2], [1, 1], True, False, None),
        ((10, 10), [4], [3], [2], False, True, 5),
    ],
)
def test_avg_pool_grad_matches_kernel(size, kernel, stride, padding, ceil_mode, count_include_pad, divisor):
    x = _randn(2, 3, *size, seed=1)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    grad = _randn(*aten.avg_pool2d(x, *args).shape, seed=2)
    want = aten.avg_pool2d_backward(grad, x, *args)
    torch.testing.assert_close(TABLE[aten.avg_pool2d_backward.default](grad, x, *args), want)


@pytest.mark.parametrize(("size", "out"), [((9, 9), [4, 4]), ((7, 10), [3, 5]), ((6, 6), [6, 6])])
def test_adaptive_avg_pool_grad_matches_kernel(size, out):
    x = _randn(2, 3, *size, seed=1)
    grad = _randn(2, 3, *out, seed=2)
    want = aten._adaptive_avg_pool2d_backward(grad, x)
    torch.testing.assert_close(TABLE[aten._adaptive_avg_pool2d_backward.default](grad, x), want)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "ceil_mode"),
    [([2, 2], [2, 2], [0, 0], [1, 1], False), ([3, 3], [2, 1], [1, 1], [1, 2], True)],
)
def test_max_pool_grad_matches_kernel(kernel, stride, padding, dilation, ceil_mode):
    x = _randn(2, 3, 9, 8, seed=1)
    args = (kernel, stride, padding, dilation, ceil_mode)
    out, indices = aten.max_pool2d_with_indices(x, *args)
    grad = _randn(*out.shape, seed=2)
    want = aten.max_pool2d_with_indices_backward(grad, x, *args, indices)
    # Users who train reproducibly trace in deterministic mode, where torch's own
    # decomposition gives up (NotImplemented) and leaves an op the exporter cannot translate.
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        got = TABLE[aten.max_pool2d_with_indices_backward.default](grad, x, *args, indices)
    finally:
        torch.use_deterministic_algorithms(before)
    torch.testing.assert_close(got, want)
    _, indices = aten.adaptive_max_pool2d(x, [3, 4])  # 9 -> 3 and 8 -> 4: the divisible case
    grad = _randn(2, 3, 3, 4, seed=3)
    want = aten.adaptive_max_pool2d_backward(grad, x, indices)
    torch.testing.assert_close(TABLE[aten.adaptive_max_pool2d_backward.default](grad, x, indices), want)
