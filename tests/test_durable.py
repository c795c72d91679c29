"""Files written so that a link someone planted in a run folder is never written through: the
file aside is created new (O_EXCL, O_NOFOLLOW) and the rename replaces a link at the final name."""

import numpy as np
from helpers import blob_images

from xgal.annotate.annotator import AnnotationRequest
from xgal.annotate.folder import write_request
from xgal.core.durable import atomic_write


def test_a_planted_link_is_replaced_never_written_through(tmp_path):
    victim = tmp_path / "bashrc"
    victim.write_text("# mine\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.html").symlink_to(victim)
    (run / ".state.json.tmp").symlink_to(victim)  # at the name of the file aside too
    atomic_write(run / "report.html", b"<html>")
    atomic_write(run / "state.json", b"{}")
    assert victim.read_text() == "# mine\n"
    assert not (run / "report.html").is_symlink() and (run / "report.html").read_bytes() == b"<html>"
    assert (run / "state.json").read_bytes() == b"{}"


def test_a_file_written_private_is_private_from_its_creation(tmp_path):
    atomic_write(tmp_path / "key.json", b"secret", mode=0o600)
    assert (tmp_path / "key.json").stat().st_mode & 0o777 == 0o600


def test_a_request_folder_with_planted_links_writes_none_through_them(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    folder = tmp_path / "run" / "round-0"
    (folder / "hints").mkdir(parents=True)
    (folder / "scans").mkdir()
    for name in ("request.csv", "labels.csv", "hints/a.png", "scans/a.png"):
        (folder / name).symlink_to(victim)
    request = AnnotationRequest(
        0, blob_images(1, 1, 16, seed=0), np.zeros((1, 16, 16), np.uint8), ("x", "y"), "pool"
    )
    write_request(folder, ["a"], request)
    assert victim.read_text() == "untouched"
    assert not any(
        (folder / n).is_symlink() for n in ("request.csv", "labels.csv", "hints/a.png", "scans/a.png")
    )
