"""What a replica asks ONNX Runtime for on a GPU: the providers' options (device, TF32, TensorRT's
FP16, batch profile and engine cache keyed by model, GPU and versions), and which providers it
uses by default. Checked on the CPU: these are the arguments that the GPU tests (test_gpu.py,
run by scripts/gpu-check.sh) then start sessions with."""

import os
import stat

import numpy as np
import onnx
import pytest
import torch

from xgal.export import export_scoring_graph
from xgal.scorer.engines import ort as ort_engine
from xgal.scorer.engines.ort import OnnxRuntimeEngine, default_providers
from xgal.scorer.engines.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderSettings,
    provider_options,
)
from xgal.train.nets import build_model, default_target_layer


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("small_cnn", "linear", 3, in_channels=1).eval()
    path = tmp_path_factory.mktemp("providers") / "m.onnx"
    return export_scoring_graph(model, default_target_layer("small_cnn"), path, image_shape=(1, 32, 32))


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that names a GPU, so the cache key has one to record."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "${XGAL_FAKE_GPU:-NVIDIA H200}, 9.0, 580.159.04"\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


def test_cuda_options_name_the_device_and_tf32_only_when_turned_off(graph):
    (name, opts), (cpu, cpu_opts) = provider_options([CUDA, CPU], ProviderSettings(device_id=1), graph)
    assert (name, opts, cpu, cpu_opts) == (CUDA, {"device_id": 1}, CPU, {})
    [(_, strict)] = provider_options([CUDA], ProviderSettings(tf32=False), graph)
    assert strict == {"device_id": 0, "use_tf32": 0}


def test_tensorrt_options_profile_the_batch_and_key_the_cache(graph, tmp_path, fake_gpu):
    cache = tmp_path / "engines"
    settings = ProviderSettings(fp16=True, engine_cache=cache, max_batch=48)
    [(name, opts)] = provider_options([TENSORRT], settings, graph)
    assert name == TENSORRT and opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"]
    # The graph's inputs, batch 1 to --max-batch (the target input is an initializer, not fed).
    assert opts["trt_profile_min_shapes"] == "image:1x1x32x32,roi:1x32x32"
    assert opts["trt_profile_max_shapes"] == "image:48x1x32x32,roi:48x32x32"
    folder = opts["trt_engine_cache_path"]
    assert os.path.isdir(folder) and os.path.dirname(folder) == str(cache)  # one folder per key

    def folder_for(**change):
        [(_, o)] = provider_options([TENSORRT], ProviderSettings(**{**vars(settings), **change}), graph)
        return o["trt_engine_cache_path"]

    assert folder_for() == folder  # the same model, GPU and settings find their engines again
    assert folder_for(fp16=False) != folder
    assert folder_for(max_batch=64) != folder
    fake_gpu.setenv("XGAL_FAKE_GPU", "NVIDIA H100 80GB HBM3")
    assert folder_for() != folder  # engines built for another GPU are not trusted


def test_without_a_gpu_identity_engines_are_not_cached(graph, tmp_path, monkeypatch):
    """No nvidia-smi, no GPU identity: a cached engine could be another GPU's, so none is kept."""
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to run there
    [(_, opts)] = provider_options([TENSORRT], ProviderSettings(engine_cache=tmp_path / "e"), graph)
    assert not any(k.startswith(("trt_engine_cache", "trt_timing_cache")) for k in opts)
    assert opts["trt_profile_max_shapes"] == "image:64x1x32x32,roi:64x32x32"
    assert not (tmp_path / "e").exists()


def test_the_model_bytes_key_the_cache_as_the_file_does(graph, tmp_path, fake_gpu):
    settings = ProviderSettings(engine_cache=tmp_path / "engines")
    [(_, from_file)] = provider_options([TENSORRT], settings, graph)
    [(_, from_bytes)] = provider_options([TENSORRT], settings, graph.read_bytes())
    assert from_bytes["trt_engine_cache_path"] == from_file["trt_engine_cache_path"]
    other = tmp_path / "other.onnx"
    proto = onnx.load(graph)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "x"})
    onnx.save(proto, other)
    [(_, changed)] = provider_options([TENSORRT], settings, other)
    assert changed["trt_engine_cache_path"] != from_file["trt_engine_cache_path"]


def test_tensorrt_is_a_default_only_where_its_libraries_load(monkeypatch):
    installed = [TENSORRT, CUDA, CPU]
    monkeypatch.setattr(ort_engine.ort, "get_available_providers", lambda: installed)
    monkeypatch.setattr(ort_engine, "tensorrt_loadable", lambda: False)
    assert default_providers() == [CUDA, CPU]
    monkeypatch.setattr(ort_engine, "tensorrt_loadable", lambda: True)
    assert default_providers() == installed


def test_a_session_gets_the_options(graph, monkeypatch):
    """The engine hands ONNX Runtime the (name, options) pairs, not bare names."""
    seen = {}
    real = ort_engine.ort.InferenceSession

    def spy(model, sess_options=None, providers=None):
        seen["providers"] = providers
        return real(model, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort_engine.ort, "InferenceSession", spy)
    engine = OnnxRuntimeEngine(graph, providers=[CPU], settings=ProviderSettings(device_id=3))
    assert seen["providers"] == [(CPU, {})]
    out = engine.run(np.zeros((2, 1, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8))
    assert out.probs.shape == (2, 3)
