"""`xgal model triton`: a scoring graph as a Triton model repository entry. No Triton server runs
here, so the config is read back with a small parser of the protobuf text format and checked
against what ONNX Runtime says the graph takes and gives."""

import re

import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import run_xgal

from xgal.core.contract import NotAScoringGraphError
from xgal.core.errors import InvalidArgument
from xgal.export import export_scoring_graph
from xgal.scorer.triton import write_triton_entry
from xgal.train.nets import build_model, default_target_layer

ORT_TO_TRITON = {
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float)": "TYPE_FP32",
}


def parse_pbtxt(text: str) -> dict:
    """Protobuf text format into {field: [values]}; messages become dicts, lists flatten."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', text)
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return fields("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        return tok[1:-1] if tok.startswith('"') else tok

    def fields(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            name = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            out.setdefault(name, []).extend(v if isinstance(v, list) else [v])
        pos += 1
        return out

    return fields(None)


def _export(folder, dtype):
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    return export_scoring_graph(
        model,
        default_target_layer("small_cnn"),
        folder / f"round3-{dtype}.onnx",
        image_shape=(1, 32, 32),
        pixel_dtype=dtype,
    )


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("triton"), "uint8")


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_config_follows_the_graph(dtype, graph, tmp_path):
    graph = graph if dtype == "uint8" else _export(tmp_path, dtype)
    entry = write_triton_entry(graph, tmp_path / "repo", name="brats", version=3, max_batch=32, gpu=True)
    assert entry == tmp_path / "repo" / "brats"
    assert (entry / "3" / "model.onnx").read_bytes() == graph.read_bytes()
    cfg = parse_pbtxt((entry / "config.pbtxt").read_text())
    assert cfg["name"] == ["brats"] and cfg["backend"] == ["onnxruntime"] and cfg["max_batch_size"] == ["32"]
    assert cfg["instance_group"][0]["kind"] == ["KIND_GPU"]
    assert cfg["dynamic_batching"][0]["preferred_batch_size"] == ["8", "16", "32"]

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    # ONNX Runtime lists an input with a default (`target`) among the overridable initializers.
    fed = session.get_inputs() + session.get_overridable_initializers()
    for section, values in (("input", fed), ("output", session.get_outputs())):
        declared = {t["name"][0]: t for t in cfg[section]}
        assert set(declared) == {v.name for v in values}, section
        for v in values:
            t = declared[v.name]
            assert t["data_type"] == [ORT_TO_TRITON[v.type]], v.name
            assert not isinstance(v.shape[0], int), v.name  # the batch: left out of dims
            rest = [str(d) for d in v.shape[1:]]
            # A per-sample scalar is [1] reshaped to [] (Triton's dims are never empty).
            assert t["dims"] == (rest or ["1"]), v.name
            assert ("reshape" in t) == (not rest), v.name
    # `target` has a default in the graph (the predicted class): Triton may leave it out.
    optional = {t["name"][0] for t in cfg["input"] if t.get("optional") == ["true"]}
    assert optional == {"target"}


def test_refusals(graph, tmp_path):
    repo = tmp_path / "repo"
    write_triton_entry(graph, repo, name="m")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_triton_entry(graph, repo, name="m")
    assert write_triton_entry(graph, repo, name="m", overwrite=True) == repo / "m"
    for bad in ("../m", "a b", ""):
        with pytest.raises(InvalidArgument, match="model name"):
            write_triton_entry(graph, repo, name=bad)
    plain = tmp_path / "plain.onnx"
    proto = onnx.load(graph)
    del proto.metadata_props[:]
    onnx.save(proto, plain)
    with pytest.raises(NotAScoringGraphError):
        write_triton_entry(plain, repo)


def test_cli_writes_the_entry(graph, tmp_path):
    run = run_xgal("model", "triton", graph, "--repo", tmp_path / "r", timeout=120)
    assert run.returncode == 0, run.stderr
    cfg = parse_pbtxt((tmp_path / "r" / graph.stem / "config.pbtxt").read_text())
    assert cfg["name"] == [graph.stem] and cfg["instance_group"][0]["kind"] == ["KIND_CPU"]
    assert (tmp_path / "r" / graph.stem / "1" / "model.onnx").is_file()
