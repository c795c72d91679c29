"""Which way imports go (docs/design.md): the core, the client and annotation never import the
scorer, the torch parts (train, export, loop) or torch; the scorer never imports torch or the
torch parts at module level.

Two checks: every `import` statement in the core's, the client's and annotation's files (module
level or inside a function), read from the source; and what importing every scorer, annotation
and CLI module really loads, in a fresh interpreter."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import xgal

ROOT = Path(xgal.__file__).parent
TORCH_PARTS = ("torch", "torchvision", "xgal.train", "xgal.export", "xgal.loop")
TORCH_FREE_FORBIDDEN = (*TORCH_PARTS, "xgal.scorer", "xgal.bench", "xgal.demo")
ANNOTATE_FORBIDDEN = (*TORCH_FREE_FORBIDDEN, "xgal.client", "onnxruntime", "onnx", "grpc")
CORE_FORBIDDEN = (
    *TORCH_FREE_FORBIDDEN,
    "xgal.client",
    "xgal.pool",
    "xgal.cli",
    "onnxruntime",
    "onnx",
    "grpc",
)


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def violations(package: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for name in imported_names(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("core", CORE_FORBIDDEN), ("client", TORCH_FREE_FORBIDDEN), ("annotate", ANNOTATE_FORBIDDEN)],
)
def test_core_client_and_annotate_import_only_what_they_may(package, forbidden):
    assert violations(package, forbidden) == []


def test_the_import_check_sees_a_forbidden_import(tmp_path):
    # The check above must be able to fail: an import inside a function is caught too.
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "sneaky.py").write_text("def f():\n    from xgal.scorer.pipeline import score_pool\n")
    assert violations("core", CORE_FORBIDDEN, tmp_path) == ["core/sneaky.py imports xgal.scorer.pipeline"]


def _modules(package: str) -> list[str]:
    pkg = __import__(f"xgal.{package}", fromlist=["_"])
    return [package_name for _, package_name, _ in pkgutil.walk_packages(pkg.__path__, f"xgal.{package}.")]


def test_scorer_annotate_and_cli_load_no_torch_at_module_level():
    # The eager reference engine imports torch on purpose (tests and checks only).
    modules = [m for m in _modules("scorer") if m != "xgal.scorer.engines.torch_ref"]
    modules += _modules("core") + _modules("client") + _modules("annotate")
    modules += [m for m in _modules("cli") if m != "xgal.cli.__main__"]
    modules += ["xgal.scorer", "xgal.core", "xgal.client", "xgal.annotate", "xgal.pool"]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'"
        " or m.startswith(('xgal.train', 'xgal.export', 'xgal.loop', 'xgal.bench')))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert len(modules) > 15, modules
    assert json.loads(out.stdout) == []
