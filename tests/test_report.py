"""`xgal report`: a run folder of two hand-off rounds becomes one self-contained page (every
picture inlined, nothing fetched) with the rounds' table, the curves and each round's scans.
Everything the run folder holds is untrusted: hostile IDs, class names, a hostile run-folder
name, cells and state fields that are not numbers, hints that are not PNGs or point out of the
run all show as text or not at all, and the page's CSP allows no script. A real headless
Chromium (Playwright) opens what `xgal report` wrote: no dialog, no console error, every hint
shown, the hostile IDs as text."""

import base64
import csv
import hashlib
import json
import math
import time
from dataclasses import asdict
from html.parser import HTMLParser

import numpy as np
import pytest
from browser import headless_chromium
from helpers import blob_images, box_rois, run_xgal

from xgal.annotate.annotator import AnnotationRequest
from xgal.annotate.folder import write_request
from xgal.annotate.layout import HINTS, REQUEST, file_name
from xgal.annotate.report import write_report
from xgal.core.errors import InvalidArgument
from xgal.loop import LoopConfig, RoundRecord

SCRIPT_ID, IMG_ID, QUOTE_ID = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    'x" onerror="alert(6)',
)
HOSTILE_FOLDER = "run<img src=x onerror=alert(3)>"
HOSTILE_CLASSES = ("<b onmouseover=alert(4)>round</b>", "<script>alert(5)</script>")
# What the page may hold: anything else came from the run's data.
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "code", "p", "table", "tr", "th", "td"}
TAGS |= {"img", "section", "div", "figure", "figcaption", "br", "b"}
ATTRIBUTES = {"lang", "http-equiv", "content", "charset", "class", "src", "alt"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self.text: list[str] = []
        self.cells: list[str] = []
        self.headers: list[str] = []
        self.style = ""
        self.rows = 0
        self.tables = 0
        self._in: str | None = None

    def handle_endtag(self, tag):
        self.tables += tag == "table"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag in ("script", "link", "iframe") or (tag == "a" and a.get("href")):
            self.links.append(tag)
        if tag == "tr" and not self.tables:  # the rounds' table, the page's first
            self.rows += 1
        self._in = tag

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "h2":
            self.headings.append(data)
        if self._in == "td":
            self.cells.append(data)
        if self._in == "th":
            self.headers.append(data)
        if self._in == "style":
            self.style += data
        self._in = None


def _parse(path):
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _make_run(tmp_path, folder, names, ids_per_round):
    """A run folder as the folder hand-off leaves it after two rounds (round 1 with a model)."""
    out = tmp_path / folder
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
    for n, ids in enumerate(ids_per_round):
        count = len(ids)
        request = AnnotationRequest(
            n, blob_images(count, 1, 32, seed=n), box_rois(count, 32, seed=n), names, "pool"
        )
        if n == 1:
            request.probs = np.full((count, 3), 0.2)
            request.probs[np.arange(count), np.arange(count) % 2] = 0.6  # predicts classes 0 and 1
            request.cams = np.random.default_rng(0).random((count, 32, 32))
            request.ranking = {i: {"score": 0.5, "uncertainty": 1.0, "misalignment": 0.2} for i in ids}
        write_request(out / f"round-{n}", ids, request)
    return out


@pytest.fixture
def run(tmp_path):
    names = ("round", "striated", "spiculated")
    return _make_run(
        tmp_path, "run", names, [[f"scan-{n}-{i}" for i in range(c)] for n, c in ((0, 4), (1, 3))]
    )


@pytest.fixture
def hostile_run(tmp_path):
    """The same run with hostile IDs, class names and (where the file system allows) folder name."""
    try:
        (tmp_path / HOSTILE_FOLDER).mkdir()
        (tmp_path / HOSTILE_FOLDER).rmdir()
        folder = HOSTILE_FOLDER
    except OSError:
        folder = "run"
    ids = [[SCRIPT_ID, "scan-0-1", QUOTE_ID, "scan-0-3"], [IMG_ID, "scan-1-1", "scan-1-2"]]
    return _make_run(tmp_path, folder, (*HOSTILE_CLASSES, "spiculated"), ids)


def _check_only_the_reports_own_markup(page, ids):
    """Every tag and attribute is one the report writes; no value came from the run's data."""
    assert {tag for tag, _ in page.tags} <= TAGS, "an element came from the run's data"
    for tag, attrs in page.tags:
        assert set(attrs) <= ATTRIBUTES, f"<{tag}> has an attribute from the run's data: {attrs}"
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
            assert attrs["alt"] in (*ids, "learning curves")
        assert attrs.get("class") in (None, "round", "grid", "settings")


def test_the_report_is_one_self_contained_page_of_the_rounds(run):
    path = write_report(run)
    page = _parse(path)
    assert page.links == []  # nothing to fetch: no scripts, stylesheets or links
    assert len(page.images) == 1 + 4 + 3 and all(s.startswith("data:image/png;base64,") for s in page.images)
    assert any(h.startswith("Round 0: 4 scans, the initial set") for h in page.headings)
    assert any(h.startswith("Round 1: 3 scans, chosen by the model of round 0") for h in page.headings)
    assert page.rows == 1 + 2  # header and the two rounds
    assert "n/a" in path.read_text()  # a Dice not measured says so


def test_the_report_shows_the_answers_the_settings_as_a_table_and_says_when_dice_was_not_measured(run):
    """Each answered scan's caption says what the radiologist answered (or that it was left
    unanswered); the settings are a table of dotted names; a test split without ROIs is said in
    words, not shown as an empty Dice plot."""
    ids = [f"scan-0-{i}" for i in range(4)]
    labels = np.array([1, 2, 0, -1])  # the last left unanswered (a round closed with --partial)
    np.savez(
        run / "round-0" / "answers.npz",
        ids=np.array(ids),
        labels=labels,
        rois=np.zeros((4, 32, 32), np.uint8),
    )
    page = _Page()
    page.feed(write_report(run).read_text())
    text = " ".join(page.text)
    for sample_id, answer in zip(ids, ("striated", "spiculated", "round", "left unanswered"), strict=True):
        assert f"answered: {answer}" in text.split(sample_id, 1)[1].split("#", 1)[0]
    settings = dict(zip(page.headers, page.cells[-len(page.headers) :], strict=True))
    assert settings["acquisition.lam"] == "0.3" and settings["train.alpha"] == "0.1"
    assert "No CAM-ROI Dice" not in text  # round 0 measured it
    state = json.loads((run / "state.json").read_text())
    for r in state["rounds"]:
        r["cam_dice"] = math.nan
    (run / "state.json").write_text(json.dumps(state))
    assert "No CAM-ROI Dice: the test split has no ROI." in write_report(run).read_text()


def test_hostile_ids_class_names_and_folder_show_as_text_under_a_csp_without_script(hostile_run):
    path = write_report(hostile_run)
    source = path.read_text(encoding="utf-8")
    page = _parse(path)
    assert "<script" not in source.lower()
    ids = [SCRIPT_ID, "scan-0-1", QUOTE_ID, "scan-0-3", IMG_ID, "scan-1-1", "scan-1-2"]
    _check_only_the_reports_own_markup(page, ids)
    assert len(page.images) == 1 + 4 + 3
    # The CSP is the first thing in <head>: no script, no fetch, the one style block by its hash.
    assert [t for t, _ in page.tags[:2]] == ["html", "head"]
    tag, meta = page.tags[2]
    assert tag == "meta" and meta["http-equiv"] == "Content-Security-Policy"
    policy = {d.split()[0]: d.split()[1:] for d in meta["content"].split(";")}
    style_hash = base64.b64encode(hashlib.sha256(page.style.encode()).digest()).decode()
    assert policy["default-src"] == ["'none'"] and policy["img-src"] == ["data:"]
    assert policy["style-src"] == [f"'sha256-{style_hash}'"]
    assert "script-src" not in policy and "unsafe-inline" not in meta["content"]
    # Each hostile string is there, as text: the captions, the predictions, the classes, the title.
    text = "".join(page.text)
    for hostile in (SCRIPT_ID, IMG_ID, QUOTE_ID, *HOSTILE_CLASSES):
        assert hostile in text, hostile
    assert f"predicted {HOSTILE_CLASSES[1]} (0.60)" in text
    assert text.count(f"xgal run {hostile_run.name}") == 2  # <title> and <h1>


def _spoil(run, tmp_path):
    """Edit the hostile run as anyone with write access could: cells and state fields that are
    no numbers or are markup, a hint that is an SVG, one that is a symlink out of the run, and
    a round-* folder that is no round."""
    request = run / "round-1" / REQUEST
    rows = list(csv.reader(request.open(encoding="utf-8")))
    rows[1][0], rows[1][2:5], rows[1][6] = "<u>1</u>", ["<i>0.5</i>", "1e999", "nan"], "=1+1"
    with request.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    state = json.loads((run / "state.json").read_text())
    state["rounds"][0].update(
        seconds="<b>slow</b>", model_version="<i>v1</i>", accuracy="high", labelled="<s>4</s>"
    )
    state["rounds"][1].update(macro_f1=10**400, round="<em>1</em>")
    state["config"]["note"] = "</pre><script>alert(8)</script>"
    (run / "state.json").write_text(json.dumps(state))
    hints = run / "round-0" / HINTS
    (hints / f"{file_name('scan-0-1')}.png").write_text(
        "<svg xmlns='http://www.w3.org/2000/svg' onload='alert(7)'/>"
    )
    outside = tmp_path / "outside.png"
    (hints / f"{file_name('scan-0-3')}.png").rename(outside)
    (hints / f"{file_name('scan-0-3')}.png").symlink_to(outside)
    (run / "round-<b>x").mkdir()
    (run / "round-<b>x" / REQUEST).write_bytes((run / "round-0" / REQUEST).read_bytes())


def test_cells_state_fields_and_hints_anyone_could_edit_are_shown_safely_or_left_out(hostile_run, tmp_path):
    _spoil(hostile_run, tmp_path)
    path = write_report(hostile_run)  # nothing that does not parse stops the report
    source = path.read_text(encoding="utf-8")
    page = _parse(path)
    assert "<script" not in source.lower()
    _check_only_the_reports_own_markup(page, [SCRIPT_ID, QUOTE_ID, IMG_ID, "scan-1-1", "scan-1-2"])
    assert len(page.images) == 1 + 2 + 3  # the SVG and the hint out of the run are not inlined
    text = "".join(page.text)
    assert f"#<u>1</u> {IMG_ID}" in text and "score n/a, U n/a, M n/a" in text
    assert f"predicted {HOSTILE_CLASSES[0]} (n/a)" in text
    for shown in ("<i>v1</i>", "<s>4</s>", "<em>1</em>", "alert(8)"):  # text where the state holds text
        assert shown in text, shown
    assert page.cells[:7] == ["0", "<s>4</s>", "n/a", "0.400", "0.200", "<i>v1</i>", "n/a"]  # numbers: n/a
    assert page.cells[7:11] == ["<em>1</em>", "7", "0.600", "n/a"]  # 10**400 is no float either
    assert [h.split(":")[0] for h in page.headings if h.startswith("Round ")] == ["Round 0", "Round 1"]


def test_a_state_json_that_is_not_a_runs_state_is_refused_by_name(run):
    for content in ("{", '{"rounds": "x"}', '{"rounds": [1]}', "[]"):
        (run / "state.json").write_text(content)
        with pytest.raises(InvalidArgument, match="state.json is not a run's state"):
            write_report(run)


def test_a_headless_chromium_opens_the_report_runs_nothing_and_shows_every_hint(hostile_run):
    res = run_xgal("report", hostile_run, timeout=120)
    assert res.returncode == 0, res.stderr
    dialogs, errors = [], []
    with headless_chromium() as browser:
        started = time.monotonic()
        page = browser.new_page()

        def dialog(d):
            dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((hostile_run / "report.html").as_uri(), wait_until="load")  # images' errors come first
        hints = page.evaluate(
            """() => Array.from(document.querySelectorAll("section.round")).map(s => [
                s.querySelector("h2").textContent,
                Array.from(s.querySelectorAll("figure img")).map(i => i.complete && i.naturalWidth > 0)])"""
        )
        body = page.inner_text("body")
        shown = page.get_by_text(SCRIPT_ID).first.is_visible()
        scripts = page.evaluate("document.scripts.length")
        print(f"headless Chromium: {time.monotonic() - started:.2f} s")
    assert dialogs == [] and errors == []
    assert [(h.split(":")[0], ok) for h, ok in hints] == [("Round 0", [True] * 4), ("Round 1", [True] * 3)]
    assert "Round 1: 3 scans" in body and shown and scripts == 0
    for hostile in (SCRIPT_ID, IMG_ID, QUOTE_ID, HOSTILE_CLASSES[1], hostile_run.name):
        assert hostile in body, hostile


def test_the_rounds_table_shows_the_learned_rois_dice_when_the_run_has_an_roi_head(run):
    assert "learned ROI Dice" not in write_report(run).read_text()  # no ROI head: no column
    state = json.loads((run / "state.json").read_text())
    state["rounds"][1]["roi_dice"] = 0.8125
    (run / "state.json").write_text(json.dumps(state))
    page = _parse(write_report(run))
    assert "learned ROI Dice" in page.text and "0.812" in page.text
