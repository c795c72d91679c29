"""`xgal model`: convert a scoring graph to INT8 or FP16, and show what a graph file holds.

`info` reads the metadata with the onnx package alone (no ONNX Runtime session, no torch);
the converters live with the scorer and are imported inside their commands.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from xgal.cli.common import App, out
from xgal.core.checksum import sha256_file
from xgal.core.errors import InvalidArgument, UserError

app = App(help="Convert scoring graphs (INT8, FP16), show their metadata, write a Triton entry.")


class QuantFormat(StrEnum):
    # The same names as xgal.scorer.precision.int8.QUANT_FORMATS (a test holds them equal);
    # spelled out here so that `--help` needs no ONNX Runtime.
    OPERATOR = "operator"  # QLinearConv and friends: the fastest on CPUs
    QDQ = "qdq"  # QuantizeLinear/DequantizeLinear pairs around float ops


def _distinct(src: Path, dst: Path) -> None:
    if dst.exists() and dst.resolve() == src.resolve():
        raise InvalidArgument(f"OUT must not be the input graph itself ({dst})")


@app.command("quantize")
def model_quantize(
    model: Path = typer.Argument(..., metavar="IN", help="fp32 scoring graph (.onnx) made by the exporter."),
    output: Path = typer.Argument(..., metavar="OUT", help="Where to write the INT8 scoring graph."),
    calibration: Path = typer.Option(..., help="Pool whose first samples calibrate the activation ranges."),
    samples: int = typer.Option(128, min=1, help="How many of the pool's samples calibrate."),
    quant_format: QuantFormat = typer.Option(
        QuantFormat.OPERATOR,
        "--format",
        case_sensitive=False,
        help="operator: quantized operators (fastest on CPUs); qdq: quantize/dequantize pairs.",
    ),
) -> None:
    """Write an INT8 version of a scoring graph, for CPUs.

    Static quantization calibrated on a pool; the first convolution stays fp32. Scorers serve
    it like the fp32 graph."""
    from xgal.scorer.precision.int8 import quantize_scoring_graph

    _distinct(model, output)
    path = quantize_scoring_graph(
        model, calibration, output, calibration=samples, quant_format=quant_format.value
    )
    _converted(path, f"INT8 ({quant_format.value}), calibrated on up to {samples} samples of {calibration}")


@app.command("fp16")
def model_fp16(
    model: Path = typer.Argument(..., metavar="IN", help="fp32 scoring graph (.onnx) made by the exporter."),
    output: Path = typer.Argument(..., metavar="OUT", help="Where to write the FP16 scoring graph."),
) -> None:
    """Write an FP16 version of a scoring graph (same inputs and outputs), for GPU providers."""
    from xgal.scorer.precision.fp16 import half_scoring_graph

    _distinct(model, output)
    _converted(half_scoring_graph(model, output), "FP16")


@app.command("fixed-batch")
def model_fixed_batch(
    model: Path = typer.Argument(..., metavar="IN", help="Scoring graph (.onnx) with a dynamic batch."),
    output: Path = typer.Argument(..., metavar="OUT", help="Where to write the fixed-batch graph."),
    batch: int = typer.Option(64, help="The batch every run has (the engine pads a shorter one)."),
) -> None:
    """Write a scoring graph whose batch is fixed, for CUDA graphs (`xgal serve --cuda-graph`):
    the same inputs, outputs and metadata; a short batch is padded by the engine."""
    from xgal.scorer.fixed_batch import write_fixed_batch_graph

    _distinct(model, output)
    _converted(write_fixed_batch_graph(model, output, batch), f"fixed batch {batch}")


@app.command("triton")
def model_triton(
    model: Path = typer.Argument(..., metavar="M", help="Scoring graph (.onnx)."),
    repo: Path = typer.Option(..., help="Triton model repository folder (created if missing)."),
    name: str | None = typer.Option(None, help="Model name in the repository (default: the file's stem)."),
    version: int = typer.Option(1, min=1, help="Version folder to write."),
    max_batch: int = typer.Option(64, min=1, help="max_batch_size and the largest preferred batch."),
    max_delay_us: int = typer.Option(5000, min=0, help="Dynamic batching: longest wait to fill a batch."),
    gpu: bool = typer.Option(False, help="Instances on the GPU (KIND_GPU) instead of the CPU."),
    overwrite: bool = typer.Option(False, help="Replace a version that is already there."),
) -> None:
    """Write a scoring graph as a Triton Inference Server model repository entry.

    <repo>/<name>/<version>/model.onnx and <repo>/<name>/config.pbtxt (ONNX Runtime backend,
    the graph's inputs and outputs, dynamic batching), so Triton can serve per-image scoring with
    its own health, metrics and perf_analyzer. The pool-level ranking stays with xgal."""
    from xgal.scorer.triton import write_triton_entry

    entry = write_triton_entry(
        model,
        repo,
        name=name,
        version=version,
        max_batch=max_batch,
        max_delay_us=max_delay_us,
        gpu=gpu,
        overwrite=overwrite,
    )
    out.print(f"wrote {entry / str(version) / 'model.onnx'} and {entry / 'config.pbtxt'}", highlight=False)


def _converted(path: Path, what: str) -> None:
    doc = describe(path)
    out.print(f"wrote {path}: {what}; graph SHA-256 {doc['graph_sha256'][:16]}…", highlight=False)


def describe(path: Path) -> dict[str, Any]:
    """The graph's metadata (`ScoringGraphInfo.describe()`), its file's SHA-256 and size, and
    whether the graph SHA-256 in the metadata is that of the graph in the file."""
    from xgal.core.contract import graph_sha256, read_metadata

    try:
        import onnx
    except ImportError:
        raise UserError(
            "reading a scoring graph needs the onnx package: pip install 'xgal[scorer]'"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise their own types for a file that is not ONNX
        raise InvalidArgument(f"{path} is not an ONNX model ({type(exc).__name__})") from None
    info = read_metadata(proto, str(path))
    doc = info.describe()
    # Weights kept in separate files are not loaded, so the graph's hash cannot be checked.
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    doc["graph_sha256_matches"] = None if external else graph_sha256(proto) == info.graph_sha256
    doc["file_sha256"] = sha256_file(path)
    doc["file_bytes"] = path.stat().st_size
    return doc


def _normalisation(n: dict[str, Any] | None) -> str:
    if n is None:
        return "not recorded"
    return f"(pixel / {n['scale']:g} - mean {list(n['mean'])}) / std {list(n['std'])}"


@app.command("info")
def model_info(
    model: Path = typer.Argument(..., metavar="M", help="Scoring graph (.onnx)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON."),
) -> None:
    """Print a scoring graph's metadata.

    Classes, input, normalisation, Grad-CAM layer, head, architecture, round, precision, xgal
    version, the graph SHA-256 it records (checked against the graph), and the file's SHA-256."""
    doc = describe(model)
    if as_json:
        typer.echo(json.dumps({"path": str(model), **doc}, indent=1))
        return
    c, h, w = doc["input_shape"]
    checked = {True: "matches the graph", False: "does NOT match the graph", None: "not checked"}
    lines = [
        f"{model}: xgal scoring graph, {doc['precision']}",
        f"  classes        {doc['num_classes']}: {', '.join(doc['class_names'])}",
        f"  input          {doc['pixel_dtype']} [N, {c}, {h}, {w}]",
        f"  normalisation  {_normalisation(doc['normalisation'])}",
        f"  target layer   {doc['target_layer']} (CAM {doc['cam_shape'][0]} x {doc['cam_shape'][1]})",
        f"  head           {doc['head']}",
        f"  arch           {doc['arch']}",
        f"  round          {doc['round_index']}",
        f"  precision      {doc['precision']}",
        f"  xgal version   {doc['version']}",
        f"  graph SHA-256  {doc['graph_sha256']} ({checked[doc['graph_sha256_matches']]})",
        f"  file SHA-256   {doc['file_sha256']} ({doc['file_bytes']} bytes)",
    ]
    for line in lines:
        out.print(line, markup=False, highlight=False)
