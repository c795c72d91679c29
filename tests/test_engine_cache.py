"""The key of the TensorRT provider's engine cache folder: it follows every input, and the GPU
identity it records is read from nvidia-smi (a fake one in tmp_path). The options that use it
are checked in test_providers.py."""

import hashlib
import json
import os
import stat
import sys
import time

import pytest

from xgal.scorer.engines.providers import cache_key, default_root, gpu_identity, key_inputs

SHA = "0123456789abcdef" * 4
BASE = {
    "gpu": "NVIDIA H200, compute 9.0, driver 580.159.04",
    "precision": "fp32",
    "versions": {"tensorrt": "10.9"},
}


def _key(sha=SHA, **changes):
    args = {**BASE, **changes}
    return cache_key(sha, **args)


def test_key_is_stable_and_folder_safe():
    assert _key() == _key()
    assert _key(versions={"tensorrt": "10.9"}) == cache_key(SHA, **BASE)
    key = _key()
    assert key.startswith(SHA[:12])
    assert all(c.isalnum() or c in "-_." for c in key)
    # The versions' order is not part of the key; their content is.
    a = _key(versions={"tensorrt": "10.9", "onnxruntime": "1.31.1"})
    b = _key(versions={"onnxruntime": "1.31.1", "tensorrt": "10.9"})
    assert a == b


def test_key_is_the_digest_of_its_inputs():
    # The folders of engines already built are named by this: a change here orphans them.
    inputs = key_inputs(SHA, **BASE)
    assert inputs == {"model_sha256": SHA, **BASE}
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert _key() == f"{SHA[:12]}-{hashlib.sha256(canonical.encode()).hexdigest()[:24]}"
    assert _key() == "0123456789ab-939d32ea5949418a9addec20"


@pytest.mark.parametrize(
    "change",
    [
        {"sha": "f" + SHA[1:]},
        {"sha": SHA[:-1] + "0"},  # past the readable prefix: only the digest can tell
        {"gpu": "NVIDIA H100 80GB HBM3, compute 9.0, driver 580.159.04"},
        {"gpu": "NVIDIA H200, compute 9.0, driver 580.160.01"},
        {"precision": "fp16"},
        {"versions": {"tensorrt": "10.10"}},
        {"versions": {"tensorrt": "10.9", "onnxruntime": "1.31.1"}},
        {"versions": {}},
    ],
)
def test_key_changes_with_each_input(change):
    assert _key(**change) != _key()


def test_key_refuses_empty_inputs():
    with pytest.raises(ValueError):
        cache_key("", **BASE)
    with pytest.raises(ValueError):
        _key(gpu="")


def _fake_smi(tmp_path, body, shebang="/bin/sh"):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "nvidia-smi"
    script.write_text(f"#!{shebang}\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return bindir


def test_gpu_identity_none_without_nvidia_smi(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert gpu_identity() is None


def test_gpu_identity_parses_nvidia_smi(tmp_path, monkeypatch):
    bindir = _fake_smi(
        tmp_path,
        'echo "NVIDIA H200, 9.0, 580.159.04"\necho "NVIDIA H100 80GB HBM3, 9.0, 580.159.04"\n',
    )
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    assert gpu_identity() == "NVIDIA H200, compute 9.0, driver 580.159.04"
    assert gpu_identity(1) == "NVIDIA H100 80GB HBM3, compute 9.0, driver 580.159.04"
    assert gpu_identity(2) is None


@pytest.mark.parametrize(
    "body",
    [
        'echo "NVIDIA H200, 9.0, 580.159.04"\nexit 9\n',  # output, but a failed run
        "exit 0\n",  # no GPU listed
        'echo "garbage"\n',
    ],
)
def test_gpu_identity_none_when_nvidia_smi_fails(tmp_path, monkeypatch, body):
    monkeypatch.setenv("PATH", f"{_fake_smi(tmp_path, body)}{os.pathsep}{os.environ['PATH']}")
    assert gpu_identity() is None


def test_gpu_identity_none_when_nvidia_smi_hangs(tmp_path, monkeypatch):
    import xgal.scorer.engines.providers as providers

    monkeypatch.setattr(providers, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    # One process (not sh and a child) so that the timeout's kill ends it and its output pipe.
    body = 'import time\ntime.sleep(5)\nprint("NVIDIA H200, 9.0, 580.159.04")\n'
    bindir = _fake_smi(tmp_path, body, shebang=sys.executable)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    assert gpu_identity() is None
    assert time.monotonic() - started < 4


def test_default_root_is_beside_the_model_or_the_user_cache(tmp_path, monkeypatch):
    assert (
        default_root(tmp_path / "repo" / "m" / "1" / "model.onnx")
        == tmp_path / "repo" / "m" / "1" / ".engines"
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root(b"onnx bytes") == tmp_path / "cache" / "xgal" / "engines"
