"""The checked-in stubs in xgal/v1 are exactly what scripts/gen_proto.sh makes from proto/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_stubs_match_proto(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    made = sorted(p.name for p in (tmp_path / "xgal" / "v1").iterdir())
    have = sorted(p.name for p in (ROOT / "xgal" / "v1").iterdir() if p.is_file())
    assert made == have
    for name in made:
        assert (tmp_path / "xgal" / "v1" / name).read_bytes() == (ROOT / "xgal" / "v1" / name).read_bytes(), (
            f"xgal/v1/{name} is stale: run `bash scripts/gen_proto.sh`"
        )
