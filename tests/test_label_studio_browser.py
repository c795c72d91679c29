"""The radiologist's side of the Label Studio hand-off, through Label Studio's own web page: a
real Label Studio 1.23.2 on 127.0.0.1 (tests/label_studio_server) and Debian's Chromium driven
by Playwright (tests/browser). `xgal train` stops at round 1 (a model, so a predicted class),
`xgal label-studio push` puts its three scans into the run's project; in the browser the
radiologist logs in, opens the project and labels every task of the queue: the scan and the
Grad-CAM hint are shown, the predicted class is ticked, the pool's ROI is one brush region. On
the first scan the class is changed, a stroke is painted beside the ROI and one erased through
it; the other two are submitted as pre-filled. `xgal label-studio pull` then records exactly
that: the class clicked, the ROI changed only along the two strokes, the others untouched.

Selectors are pinned to Label Studio 1.23.2's labelling page (its class names and test ids change
between versions); each says what it is. XGAL_SCREENSHOT=1 rewrites docs/label-studio-labelling.png
with the labelling page just before the first submit (every run takes that screenshot into its
temporary folder)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import run_xgal as xgal
from PIL import Image

from xgal.pool.format import Pool
from xgal.pool.synth import synth_pool
from xgal.pool.writer import PoolWriter

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "label-studio-labelling.png"
SIZE = 32  # the pool's scans; the labelling page scales them up to fit (~22 screen px a pixel)
VIEWPORT = {"width": 1280, "height": 900}
WAIT_MS = 30_000  # the limit on every wait on the page
BRUSH_MAX = 50  # Label Studio's largest brush and eraser, in screen pixels ("]" adds 5)
NEAR = 2  # image pixels within which a stroke's rasterised edge lies from its centre line

# Label Studio 1.23.2's pages:
LABEL_ALL = "Label All Tasks"  # the Data Manager's button that opens the queue of unlabelled tasks
IMAGES = "img[alt=image]"  # each <Image> tag's picture (loaded as a blob, drawn on canvases): scan, hint
CAPTION = "h3"  # a <Header>: the first is the caption ($caption), the second the hint's title
CHOICES = ".lsf-choices"  # the <Choices> block
CHOICE = "input[name='{}']"  # in it, a <Choice>'s checkbox (ant-design), named by its value
CHOICE_LABEL = ".lsf-choice__checkbox"  # the clickable label around one
BRUSH_REGION = ".lsf-tree__node_type_brushregion"  # a brush region's row in the Regions list
REGION_TITLE = ".lsf-outliner-item__title"  # its label's name
LABELS = ".lsf-labels"  # a labels block: the first is <BrushLabels>, the second <RectangleLabels>
LABEL = ".lsf-label"  # a label in it (selecting the brush's takes the brush tool)
ERASER = "button[aria-label=eraser]"  # the image toolbar's eraser (enabled once a brush region is selected)
SUBMIT = "bottombar-submit-button"  # data-testid of the bottom bar's Submit
# Its hotkeys: "]" a larger brush or eraser, "u" unselect the region.


def _archive(root: Path) -> tuple[Pool, dict[str, str], dict[str, np.ndarray]]:
    """An unlabelled pool whose every scan carries the ROI a previous reader drew, and the truth
    only the 'radiologist' knows."""
    labelled = synth_pool(root / "truth", 60, seed=1, image_size=SIZE, shard_size=100)
    d = labelled.read(0, labelled.count, ("ids", "images", "rois", "labels"))
    with PoolWriter(root / "archive", image_shape=(1, SIZE, SIZE), class_names=labelled.class_names) as w:
        w.add(d["ids"].tolist(), d["images"], d["rois"], None)
    ids = d["ids"].tolist()
    truth = dict(zip(ids, (labelled.class_names[i] for i in d["labels"]), strict=True))
    return Pool(root / "archive"), truth, dict(zip(ids, d["rois"] > 0, strict=True))


def _run_at_round_1(pool: Pool, truth: dict[str, str], run: Path, work: Path) -> None:
    """`xgal train` until it waits at round 1, the initial set answered through the folder."""
    train = [
        "train", "--pool", pool.path, "--initial", 8, "--per-round", 3, "--rounds", 1,
        "--epochs", 1, "--out", run,
    ]  # fmt: skip
    res = xgal(*train)
    assert res.returncode == 3, res.stdout + res.stderr
    with open(run / "round-0" / "request.csv", newline="") as f:
        asked = [row["id"] for row in csv.DictReader(f)]
    with open(work / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "label"), *((i, truth[i]) for i in asked)])
    res = xgal("annotations", "add", run, "--labels", work / "labels.csv")
    assert res.returncode == 0, res.stderr
    res = xgal(*train)
    assert res.returncode == 3 and "round 1: 3 scans wait" in res.stdout, res.stdout + res.stderr


@pytest.fixture
def browser():
    from browser import headless_chromium

    with headless_chromium() as b:
        yield b


def test_a_radiologist_labels_the_round_in_label_studios_web_page(browser, tmp_path, request):
    import label_studio_server

    pool, truth, pool_rois = _archive(tmp_path)
    # The server starts (~20 s) while xgal trains; the run lies under its document root.
    ls_root = tmp_path / "ls"
    run = ls_root / "files" / "run"
    started: dict[str, object] = {}

    def start() -> None:
        try:
            started["server"] = label_studio_server.start(ls_root)
        except BaseException as e:
            started["error"] = e

    starting = threading.Thread(target=start, daemon=True)
    starting.start()
    try:
        _run_at_round_1(pool, truth, run, tmp_path)
    finally:
        starting.join(timeout=label_studio_server.START_TIMEOUT + 60)
        if "server" in started:
            request.addfinalizer(started["server"].stop)
    if "server" not in started:
        raise started.get("error") or RuntimeError("Label Studio did not start")
    server = started["server"]

    ls_args = ["--url", server.url, "--token-file", server.token_file]
    res = xgal("label-studio", "push", run, *ls_args, "--document-root", server.document_root)
    assert res.returncode == 0 and "round 1: 3 tasks added to project" in res.stdout, res.stdout + res.stderr
    link = re.search(rf"annotate them at ({re.escape(server.url)}/projects/\d+\S*?),", res.stdout)
    assert link, res.stdout
    with open(run / "round-1" / "request.csv", newline="") as f:
        asked = [row["id"] for row in csv.DictReader(f)]

    context = browser.new_context(viewport=VIEWPORT)
    # Nothing leaves the machine: any request elsewhere is refused, and counted (none is made
    # with analytics and Sentry off, as tests/label_studio_server starts Label Studio).
    elsewhere: list[str] = []

    def refuse(route) -> None:
        elsewhere.append(route.request.url)
        route.abort()

    context.route(lambda url: not url.startswith(server.url), refuse)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()

    # Log in as a radiologist does: Label Studio's login form.
    page.goto(f"{server.url}/user/login/", wait_until="domcontentloaded")
    page.fill("#email", server.email)
    page.fill("#password", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url, wait_until="commit")
    # The project's Data Manager (the link push printed), then its queue of unlabelled tasks.
    page.goto(link[1], wait_until="domcontentloaded")
    page.get_by_text(LABEL_ALL).click()

    seen: dict[str, dict] = {}
    parents: list[object] = []
    for _ in asked:
        task = _open_task(page, seen, run)
        if len(seen) == 1:  # the first: another class, a stroke painted and one erased
            task["label"] = next(c for c in pool.class_names if c != task["predicted"])
            task["paint"], task["erase"] = _edit(page, pool_rois[task["id"]], task["label"])
            page.evaluate("window.scrollTo(0, 0)")  # the caption, scan, hint and classes: one screen
            page.screenshot(path=tmp_path / "labelling.png")
        else:  # accepted as pre-filled
            task["label"] = task["predicted"]
        with page.expect_response(
            lambda r: r.request.method == "POST" and re.search(r"/api/tasks/\d+/annotations", r.url)
        ) as submitted:
            page.get_by_test_id(SUBMIT).click()
        assert submitted.value.status == 201, submitted.value.text()
        # Started from xgal's pre-filled prediction: Label Studio says so (pull reads it).
        parents.append(submitted.value.request.post_data_json.get("parent_prediction"))
    assert sorted(seen) == sorted(asked)
    assert all(isinstance(p, int) for p in parents), parents
    assert not elsewhere, elsewhere

    shot = tmp_path / "labelling.png"
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size < 300_000
    if os.environ.get("XGAL_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)

    # Every task answered in the browser: the round closes without --partial.
    res = xgal("label-studio", "pull", run, *ls_args)
    assert res.returncode == 0 and "recorded 3 answers for round-1" in res.stdout, res.stdout + res.stderr
    answers = np.load(run / "round-1" / "answers.npz")
    assert answers["ids"].tolist() == asked
    for sample_id, label, roi in zip(asked, answers["labels"], answers["rois"], strict=True):
        task, before, after = seen[sample_id], pool_rois[sample_id], roi > 0
        assert pool.class_names[label] == task["label"], sample_id  # the class clicked, or the predicted
        if "paint" not in task:  # submitted as pre-filled: the pool's ROI, pixel for pixel
            np.testing.assert_array_equal(after, before, err_msg=sample_id)
            continue
        painted, erased = task["paint"], task["erase"]
        assert all(after[p] and not before[p] for p in painted)  # the stroke, outside the pool's ROI
        assert any(before[p] for p in erased) and not any(after[p] for p in erased)  # a line erased
        changed = np.argwhere(after != before).tolist()
        strokes = _near(painted) | _near(erased)
        assert all(strokes[r, c] for r, c in changed), changed  # the rest of the pool's ROI kept


def _open_task(page, seen: dict[str, dict], run: Path) -> dict:
    """Wait for the queue's next task: its scan and hint loaded, the predicted class ticked, the
    pool's ROI as one brush region."""
    page.wait_for_function(
        """([pictures, header, seen]) => {
            const id = (document.querySelector(header)?.innerText || '').split(' · ')[2];
            const loaded = [...document.querySelectorAll(pictures)];
            return id && !seen.includes(id)
                && loaded.length == 2 && loaded.every(p => p.complete && p.naturalWidth > 0);
        }""",
        arg=[IMAGES, CAPTION, list(seen)],
        timeout=WAIT_MS,
    )
    caption = page.locator(CAPTION).first.inner_text()
    # "round 1 · rank 1 · scan-0000006 · predicted round (0.3776) · xgal score 0.5006"
    found = re.fullmatch(r"round 1 · rank (\d+) · (\S+) · predicted (\S+) \(.*", caption)
    assert found, caption
    rank, sample_id, predicted = int(found[1]), found[2], found[3]
    assert rank == len(seen) + 1, caption  # the queue follows xgal's ranking
    scan, hint = page.locator(IMAGES).all()
    assert scan.evaluate("p => [p.naturalWidth, p.naturalHeight]") == [SIZE, SIZE]  # the pool's pixels
    with Image.open(run / "round-1" / "hints" / f"{sample_id}.png") as picture:
        assert hint.evaluate("p => [p.naturalWidth, p.naturalHeight]") == list(picture.size)
    choices = page.locator(CHOICES)
    names = choices.locator("input").evaluate_all("inputs => inputs.map(i => i.name)")
    assert [c for c in names if choices.locator(CHOICE.format(c)).is_checked()] == [predicted], caption
    regions = page.locator(BRUSH_REGION)
    assert regions.count() == 1 and regions.locator(REGION_TITLE).inner_text() == "ROI", caption
    seen[sample_id] = {"id": sample_id, "predicted": predicted}
    return seen[sample_id]


def _strokes(roi: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Where to paint, (row, col) pixels: a vertical stroke of 7 beside the ROI, clear of it,
    near it, in the scan's lower half if it fits (where the screenshot shows it); and where to
    erase: across the ROI's middle row."""
    rows, cols = np.nonzero(roi)
    mid = int(np.median(rows))
    in_row = cols[rows == mid]
    erase = [(mid, c) for c in range(max(int(in_row.min()) - 1, 0), min(int(in_row.max()) + 2, SIZE))]
    taken = _near(list(zip(rows.tolist(), cols.tolist(), strict=True)), 2 * NEAR) | _near(erase, 2 * NEAR)
    centre = int(in_row.mean())
    candidates = [
        ((r0 < SIZE // 2, abs(r0 + 3 - mid) + abs(c - centre)), [(r, c) for r in range(r0, r0 + 7)])
        for r0 in range(2, SIZE - 8)
        for c in range(2, SIZE - 2)
        if not taken[r0 : r0 + 7, c].any()
    ]
    assert candidates, "no room beside the ROI for a stroke"
    return min(candidates)[1], erase


def _near(pixels: list[tuple[int, int]], d: int = NEAR) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), bool)
    for r, c in pixels:
        out[max(r - d, 0) : r + d + 1, max(c - d, 0) : c + d + 1] = True
    return out


def _edit(page, roi: np.ndarray, label: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Paint a stroke beside the pre-filled ROI and erase one through it with the mouse, then
    tick another class; returns the strokes' pixels."""
    from playwright.sync_api import expect

    paint, erase = _strokes(roi)
    page.locator(LABELS).first.locator(LABEL, has_text="ROI").click()  # the brush, with its label
    for _ in range(BRUSH_MAX // 5):
        page.keyboard.press("]")
    _drag(page, paint)
    expect(page.locator(BRUSH_REGION)).to_have_count(2)  # the painted stroke: a region of its own
    # The eraser works on the selected region: the pre-filled one, first (the list is by time).
    page.locator(BRUSH_REGION).first.click()
    page.locator(ERASER).click()
    for _ in range(BRUSH_MAX // 5):
        page.keyboard.press("]")
    _drag(page, erase)
    page.keyboard.press("u")  # unselect it
    choices = page.locator(CHOICES)
    choices.locator(CHOICE_LABEL).filter(has=page.locator(CHOICE.format(label))).click()
    expect(choices.locator(CHOICE.format(label))).to_be_checked()
    return paint, erase


def _drag(page, pixels: list[tuple[int, int]]) -> None:
    """Press at the first pixel's centre, move through the others, release: a stroke as a hand
    draws it, in page coordinates from the scan's box as it is now (a click may have scrolled)."""
    scan = page.locator(IMAGES).first
    scan.scroll_into_view_if_needed()
    box = scan.bounding_box()
    scale = box["width"] / SIZE
    # The rasterised edge of a BRUSH_MAX-wide stroke lies within NEAR pixels of its centre line
    # only while the scan is shown this large.
    assert BRUSH_MAX / 2 / scale + 0.5 <= NEAR, box

    def at(p: tuple[int, int]) -> tuple[float, float]:
        return box["x"] + (p[1] + 0.5) * scale, box["y"] + (p[0] + 0.5) * box["height"] / SIZE

    page.mouse.move(*at(pixels[0]))
    page.mouse.down()
    for p in pixels[1:]:
        page.mouse.move(*at(p), steps=4)
    page.mouse.up()
