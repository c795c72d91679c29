"""`xgal report`: a run folder of two hand-off rounds becomes one self-contained page (every
picture inlined, nothing fetched) with the rounds' table, the curves and each round's scans;
a real headless Chromium renders it where one is installed."""

import json
import math
import shutil
import subprocess
from dataclasses import asdict
from html.parser import HTMLParser

import numpy as np
import pytest
from helpers import blob_images, box_rois

from xgal.annotate.annotator import AnnotationRequest
from xgal.annotate.folder import write_request
from xgal.annotate.report import write_report
from xgal.loop import LoopConfig, RoundRecord

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome-headless-shell")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.rows = 0
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "link", "iframe") or (tag == "a" and a.get("href")):
            self.links.append(tag)
        if tag == "tr":
            self.rows += 1
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


@pytest.fixture
def run(tmp_path):
    """A run folder as the folder hand-off leaves it after two rounds (round 1 with a model)."""
    out = tmp_path / "run"
    names = ("round", "striated", "spiculated")
    rounds = [
        RoundRecord(
            round=0, labelled=4, accuracy=0.5, macro_f1=0.4, cam_dice=0.2, train_loss=1.0, model_version=1
        ),
        RoundRecord(
            round=1,
            labelled=7,
            accuracy=0.6,
            macro_f1=0.5,
            cam_dice=math.nan,
            train_loss=0.8,
            model_version=2,
        ),
    ]
    out.mkdir()
    state = {"config": LoopConfig().to_dict(), "rounds": [asdict(r) for r in rounds], "class_names": names}
    (out / "state.json").write_text(json.dumps(state))
    for n, count in ((0, 4), (1, 3)):
        ids = [f"scan-{n}-{i}" for i in range(count)]
        request = AnnotationRequest(
            n, blob_images(count, 1, 32, seed=n), box_rois(count, 32, seed=n), names, "pool"
        )
        if n == 1:
            request.probs = np.full((count, 3), 1 / 3)
            request.cams = np.random.default_rng(0).random((count, 32, 32))
            request.ranking = {i: {"score": 0.5, "uncertainty": 1.0, "misalignment": 0.2} for i in ids}
        write_request(out / f"round-{n}", ids, request)
    return out


def test_the_report_is_one_self_contained_page_of_the_rounds(run):
    path = write_report(run)
    page = _Page()
    page.feed(path.read_text())
    assert page.links == []  # nothing to fetch: no scripts, stylesheets or links
    assert len(page.images) == 1 + 4 + 3 and all(s.startswith("data:image/png;base64,") for s in page.images)
    assert any(h.startswith("Round 0: 4 scans, the initial set") for h in page.headings)
    assert any(h.startswith("Round 1: 3 scans, chosen by the model of round 0") for h in page.headings)
    assert page.rows == 1 + 2  # header and the two rounds
    assert "n/a" in path.read_text()  # a Dice not measured says so


@pytest.mark.skipif(
    not any(shutil.which(b) for b in BROWSERS),
    reason=f"no Chromium or Chrome on PATH (looked for {', '.join(BROWSERS)}); runs where one is",
)
def test_a_headless_chromium_renders_the_report(run):
    browser = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    path = write_report(run)
    res = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "Round 1: 3 scans" in res.stdout and res.stdout.count("<img") == 8
