"""The decomposition table the scoring graph is traced with (`gradpath.trace_scoring_module`).

`make_fx` records the forward and the backward of the scoring computation as ATen ops, and the
ONNX exporter then needs a translation for each. It has one, or decomposes the op itself, for
most of them; the rest are rewritten here, while tracing, into ops it translates:

- `aten.convolution_backward`: the input gradient as a transposed convolution (and that of a
  transposed convolution as an ordinary one).
- `aten._cdist_forward` / `aten._cdist_backward`, what `torch.cdist` records when it computes
  distances directly (its matrix-product path, `aten._euclidean_dist`, the exporter handles).
- the gradients of average and max pooling, which torch keeps as kernels of their own.
- the backward ops torch has decompositions for: the exporter applies only some of them
  (`aten.silu_backward` and `aten.mish_backward`, for two, reach it whole and fail).

Each rewrite reproduces the formula of torch's CPU kernel, which the eager reference engine
runs, so that parity tests compare like with like. None stores a tensor constant in the graph
(window matrices and masks come from `arange` and comparisons): a constant that is not a model
weight would stop the exporter from refilling the graph with the next round's weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch._decomp import decomposition_table

aten = torch.ops.aten


def _conv_input_grad(
    grad_out: Tensor,
    inp: Tensor,
    weight: Tensor,
    bias_sizes: list[int] | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[Tensor | None, None, None]:
    """aten.convolution_backward for the input only: a convolution's input gradient is the
    transposed convolution with the same weight, and a transposed convolution's the ordinary one."""
    if output_mask[1] or output_mask[2]:
        # The weights are frozen while tracing; a request for their gradient is a defect.
        raise NotImplementedError("the scoring graph traces input gradients only, not weight gradients")
    if not output_mask[0]:
        return None, None, None
    spatial = range(2, inp.dim())
    if transposed:
        # output_padding (< stride) only adds rows that the strided convolution never reaches.
        grad_in = aten.convolution.default(
            grad_out, weight, None, stride, padding, dilation, False, [0] * len(stride), groups
        )
        return grad_in, None, None
    # A strided convolution maps several input sizes to one output size; output_padding
    # restores the size the forward actually had.
    extra = []
    for dim, s, p, d in zip(spatial, stride, padding, dilation, strict=True):
        covered = (grad_out.shape[dim] - 1) * s - 2 * p + d * (weight.shape[dim] - 1) + 1
        extra.append(int(inp.shape[dim] - covered))
    grad_in = aten.convolution.default(grad_out, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_in, None, None


def _pairwise_diff(x1: Tensor, x2: Tensor) -> Tensor:
    """x1[..., i, :] - x2[..., j, :] as [..., P, R, M], leading dimensions broadcast."""
    return x1.unsqueeze(-2) - x2.unsqueeze(-3)


def _cdist_forward(x1: Tensor, x2: Tensor, p: float, compute_mode: int | None) -> Tensor:
    """aten._cdist_forward: the p-norm distance between every row of x1 and every row of x2.

    `compute_mode` only chooses between this direct method and the matrix-product one, which
    torch records as `aten._euclidean_dist` instead, so it does not matter here.
    """
    diff = _pairwise_diff(x1, x2).abs()
    if p == 0:
        return (diff != 0).to(diff.dtype).sum(-1)
    if p == 1:
        return diff.sum(-1)
    if p == 2:
        return (diff * diff).sum(-1).sqrt()
    if math.isinf(p):
        return diff.amax(-1)
    return diff.pow(p).sum(-1).pow(1.0 / p)


def _cdist_backward(grad: Tensor, x1: Tensor, x2: Tensor, p: float, dist: Tensor) -> Tensor:
    """aten._cdist_backward: d loss / d x1, shaped like x1 expanded to the broadcast batch (as
    the kernel returns it; autograd reduces the broadcast)."""
    diff = _pairwise_diff(x1, x2)
    g = grad.unsqueeze(-1)
    d = dist.unsqueeze(-1)
    zero = diff.new_zeros(())
    if p == 0:
        # The 0-"norm" counts nonzero differences: piecewise constant.
        return torch.zeros_like((g * diff).sum(-2))
    if p == 1:
        term = g * diff.sign()
    elif p == 2:
        # The kernel's choice at a coincident pair (d = 0): a zero subgradient, not NaN.
        term = torch.where(d == 0, zero, g * diff / d)
    elif math.isinf(p):
        # Only the coordinates that attain the maximum carry the gradient.
        attains = 1 - (d - diff.abs()).ceil().clamp_max(1)
        term = g * diff.sign() * attains
    elif p < 2:
        term = torch.where(d == 0, zero, diff.sign() * diff.abs().pow(p - 1) * g / d.pow(p - 1))
        if p < 1:
            term = torch.where(diff == 0, zero, term)
    else:
        term = torch.where(d == 0, zero, diff * diff.abs().pow(p - 2) * g / d.pow(p - 1))
    return term.sum(-2)


def _pair(v: list[int], default: list[int] | None = None) -> list[int]:
    """A pooling argument as (h, w): torch accepts one value for both, and no stride for the
    kernel size."""
    v = list(v) or list(default or [])
    return v * 2 if len(v) == 1 else v


def _spread_windows(grad: Tensor, rows: Tensor, cols: Tensor, divisor: Tensor | float) -> Tensor:
    """Each output's gradient divided by `divisor` and added to every input of its window.

    `rows` and `cols` are the 0/1 matrices [out, in] of which inputs each output covers along
    the height and the width. Both pools' windows are products of one interval per axis, so the scatter is two
    matrix products. The matrices are built from `arange` rather than stored, so the traced
    graph holds no tensor constants and the exporter can still refill it with other weights.
    """
    return rows.t().matmul(grad / divisor).matmul(cols)


def _avg_windows(
    n_in: int, n_out: int, k: int, s: int, p: int, count_include_pad: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """One axis of avg_pool2d, with the window bounds of torch's kernel: which inputs each
    output covers [out, in] and how many it divides by [out]."""
    start = torch.arange(n_out, device=device) * s - p
    # A ceil_mode window can run past the padded edge; the kernel stops it there.
    end = (start + k).clamp(max=n_in + p)
    lo, hi = start.clamp(min=0), end.clamp(max=n_in)
    pos = torch.arange(n_in, device=device)
    covers = (pos >= lo.unsqueeze(1)) & (pos < hi.unsqueeze(1))
    return covers, (end - start if count_include_pad else hi - lo)


def _avg_pool2d_grad(
    grad_out: Tensor,
    inp: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> Tensor:
    """aten.avg_pool2d_backward."""
    axes = [
        (inp.shape[-2 + a], grad_out.shape[-2 + a], k, s, p, count_include_pad, inp.device)
        for a, (k, s, p) in enumerate(
            zip(_pair(kernel_size), _pair(stride, kernel_size), _pair(padding), strict=True)
        )
    ]
    rows = _avg_windows(*axes[0])
    # Square pools are the rule: one axis's matrices serve both (and half the traced ops).
    cols = rows if axes[1] == axes[0] else _avg_windows(*axes[1])
    if divisor_override:
        divisor: Tensor | float = float(divisor_override)
    else:
        divisor = rows[1].unsqueeze(1).to(grad_out.dtype) * cols[1].to(grad_out.dtype)
    return _spread_windows(grad_out, rows[0].to(grad_out.dtype), cols[0].to(grad_out.dtype), divisor)


def _adaptive_windows(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """One axis of adaptive_avg_pool2d: output o covers inputs [floor(o·in/out),
    ceil((o+1)·in/out)), i.e. (i+1)·out > o·in and i·out < (o+1)·in, in integers."""
    o = torch.arange(n_out, device=device).unsqueeze(1)
    i = torch.arange(n_in, device=device)
    return ((i + 1) * n_out > o * n_in) & (i * n_out < (o + 1) * n_in)


def _adaptive_avg_pool2d_grad(grad_out: Tensor, inp: Tensor) -> Tensor:
    """aten._adaptive_avg_pool2d_backward."""
    sizes = [(inp.shape[-2 + a], grad_out.shape[-2 + a]) for a in range(2)]
    rows = _adaptive_windows(*sizes[0], inp.device).to(grad_out.dtype)
    cols = rows if sizes[1] == sizes[0] else _adaptive_windows(*sizes[1], inp.device).to(grad_out.dtype)
    return _spread_windows(grad_out, rows, cols, rows.sum(1, keepdim=True) * cols.sum(1))


def _max_pool_grad(grad_out: Tensor, inp: Tensor, indices: Tensor) -> Tensor:
    """The gradient of a max pool with its argmax `indices` (flat per channel, as both torch
    kernels give them): each output's gradient added to the input it took."""
    lead = inp.shape[:-2]
    flat = grad_out.new_zeros((*lead, inp.shape[-2] * inp.shape[-1]))
    grad_in = flat.scatter_add(-1, indices.flatten(-2), grad_out.flatten(-2))
    return grad_in.view(inp.shape)


def _max_pool2d_grad(
    grad_out: Tensor,
    inp: Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
    indices: Tensor,
) -> Tensor:
    """aten.max_pool2d_with_indices_backward: the window geometry is all in `indices`."""
    return _max_pool_grad(grad_out, inp, indices)


def _adaptive_max_pool2d_grad(grad_out: Tensor, inp: Tensor, indices: Tensor) -> Tensor:
    """aten.adaptive_max_pool2d_backward."""
    return _max_pool_grad(grad_out, inp, indices)


def tracing_decompositions() -> dict[torch._ops.OpOverload, Callable[..., object]]:
    """The decomposition table for `make_fx` when tracing a scoring graph."""
    table: dict[torch._ops.OpOverload, Callable[..., object]] = {
        op: fn
        for op, fn in decomposition_table.items()
        if isinstance(op, torch._ops.OpOverload) and "backward" in op.overloadpacket.__name__
    }
    table.update(
        {
            aten.convolution_backward.default: _conv_input_grad,
            aten._cdist_forward.default: _cdist_forward,
            aten._cdist_backward.default: _cdist_backward,
            aten.avg_pool2d_backward.default: _avg_pool2d_grad,
            aten._adaptive_avg_pool2d_backward.default: _adaptive_avg_pool2d_grad,
            # torch's own for the first gives up in deterministic mode (NotImplemented).
            aten.max_pool2d_with_indices_backward.default: _max_pool2d_grad,
            aten.adaptive_max_pool2d_backward.default: _adaptive_max_pool2d_grad,
        }
    )
    return table
