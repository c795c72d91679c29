"""The engine cache: keys that follow every input, entries trusted only when their sidecar
vouches for them, and the GPU identity read from nvidia-smi. Real files in tmp_path."""

import json
import logging
import os
import stat
import sys
import time

import pytest

from xgal.scorer.engines.engine_cache import BLOB, SIDECAR, EngineCache, cache_key, gpu_identity, key_inputs

SHA = "0123456789abcdef" * 4
BASE = {
    "gpu": "NVIDIA H200, compute 9.0, driver 580.159.04",
    "precision": "fp32",
    "versions": {"tensorrt": "10.9"},
}


def _key(sha=SHA, **changes):
    args = {**BASE, **changes}
    return cache_key(sha, **args)


def _meta(sha=SHA, **changes):
    return key_inputs(sha, **{**BASE, **changes})


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


def test_store_load_round_trip(tmp_path):
    cache = EngineCache(tmp_path / "cache")
    key = _key()
    assert cache.load(key) is None  # a plain miss
    blob = os.urandom(4096)
    path = cache.store(key, blob, _meta())
    assert path == tmp_path / "cache" / key / BLOB and path.read_bytes() == blob
    assert cache.load(key) == blob
    side = json.loads((path.parent / SIDECAR).read_text())
    assert side["size"] == len(blob) and side["meta"] == _meta()
    # Storing again replaces the entry.
    cache.store(key, b"second", _meta())
    assert cache.load(key) == b"second"
    assert not list(path.parent.glob(".*.tmp"))


def test_folder_is_created_and_keys_cannot_escape_root(tmp_path):
    cache = EngineCache(tmp_path)
    folder = cache.folder(_key())
    assert folder.is_dir() and folder.parent == tmp_path
    for bad in ("../x", "..", "a/b", "", "/abs", ".hidden"):
        with pytest.raises(ValueError):
            cache.folder(bad)


def _stored(tmp_path, blob=b"x" * 1000):
    cache = EngineCache(tmp_path)
    key = _key()
    path = cache.store(key, blob, _meta())
    return cache, key, path


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1])


def _no_sidecar(path):
    (path.parent / SIDECAR).unlink()


def _garble_sidecar(path):
    (path.parent / SIDECAR).write_text('{"format": "xgal-engine-cache/1", "sha')


def _no_blob(path):
    path.unlink()


@pytest.mark.parametrize("damage", [_flip, _truncate, _no_sidecar, _garble_sidecar, _no_blob])
def test_untrusted_entry_is_removed_and_missed(tmp_path, caplog, damage):
    cache, key, path = _stored(tmp_path)
    damage(path)
    with caplog.at_level(logging.WARNING, logger="xgal.scorer.engines.engine_cache"):
        assert cache.load(key) is None
    assert "discarded" in caplog.text
    assert not path.exists() and not (path.parent / SIDECAR).exists()
    # The next load is a plain miss, and a rebuilt blob is trusted again.
    assert cache.load(key) is None
    cache.store(key, b"rebuilt", _meta())
    assert cache.load(key) == b"rebuilt"


def test_blob_under_one_key_is_not_returned_for_another(tmp_path):
    cache = EngineCache(tmp_path)
    fp32, fp16 = _key(), _key(precision="fp16")
    # A record without the key's inputs: only the key it names ties the blob to its folder.
    cache.store(fp32, b"fp32 plan", {"built_by": "test"})
    assert cache.load(fp16) is None
    # Copied by hand into the other key's folder, sidecar and all: still refused.
    dst = cache.folder(fp16)
    for name in (BLOB, SIDECAR):
        (dst / name).write_bytes((tmp_path / fp32 / name).read_bytes())
    assert cache.load(fp16) is None
    assert not (dst / BLOB).exists()
    assert cache.load(fp32) == b"fp32 plan"


def test_sidecar_with_inputs_of_another_key_is_refused(tmp_path):
    cache = EngineCache(tmp_path)
    key = _key()
    # The record names this key but its inputs say fp16: someone edited it, or a bug wrote it.
    cache.store(key, b"plan", _meta(precision="fp16"))
    assert cache.load(key) is None


def test_crash_between_blob_and_sidecar_is_not_trusted(tmp_path, monkeypatch):
    import xgal.scorer.engines.engine_cache as ec

    cache, key, path = _stored(tmp_path, b"old plan")
    real = ec._write_atomic

    def crash_on_sidecar(target, data):
        if target.name == SIDECAR:
            raise OSError("disk full")
        real(target, data)

    monkeypatch.setattr(ec, "_write_atomic", crash_on_sidecar)
    with pytest.raises(OSError):
        cache.store(key, b"new plan", _meta())
    monkeypatch.undo()
    # The new blob is there, but nothing vouches for it; the old sidecar must not.
    assert cache.load(key) is None


def test_discard_keeps_foreign_files(tmp_path):
    cache, key, path = _stored(tmp_path)
    (path.parent / "ort_trt_cache.engine").write_bytes(b"ort's own")
    cache.discard(key)
    assert not path.exists() and (path.parent / "ort_trt_cache.engine").exists()
    cache.discard(key)  # idempotent


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
    import xgal.scorer.engines.engine_cache as ec

    monkeypatch.setattr(ec, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    # One process (not sh and a child) so that the timeout's kill ends it and its output pipe.
    body = 'import time\ntime.sleep(5)\nprint("NVIDIA H200, 9.0, 580.159.04")\n'
    bindir = _fake_smi(tmp_path, body, shebang=sys.executable)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    assert gpu_identity() is None
    assert time.monotonic() - started < 4


def test_default_root_is_beside_the_model_or_the_user_cache(tmp_path, monkeypatch):
    from xgal.scorer.engines.engine_cache import default_root

    assert (
        default_root(tmp_path / "repo" / "m" / "1" / "model.onnx")
        == tmp_path / "repo" / "m" / "1" / ".engines"
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_root(b"onnx bytes") == tmp_path / "cache" / "xgal" / "engines"
