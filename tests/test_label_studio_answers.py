"""How `xgal label-studio pull` reads a round's annotations, without a server: an annotation
that cannot be read is named by task and the others are read; a brush RLE declaring more pixels
than the scan has is refused before it is decoded; a deleted pre-filled ROI against a blank
annotation; a scan in two tasks; what a cold-start task says. Through a real server:
tests/test_label_studio.py."""

import io
import re
import tracemalloc
import zipfile

import numpy as np
import pytest

from xgal.annotate.label_studio_tasks import brush_result, read_answers

META = {"ids": ["a", "b", "c", "d", "e", "f"], "class_names": ["benign", "malignant"], "image_size": [32, 32],
        "round": 0}  # fmt: skip


def _task(task_id, sample_id, *regions, round_index=0):
    return {"id": task_id, "data": {"id": sample_id, "round": round_index},
            "annotations": [{"id": task_id, "result": list(regions)}]}  # fmt: skip


def _choice(label):
    return {"from_name": "label", "to_name": "scan", "type": "choices", "value": {"choices": label}}


def _box(**value):
    return {"from_name": "box", "to_name": "scan", "type": "rectanglelabels", "original_width": 32,
            "original_height": 32, "value": {**value, "rectanglelabels": ["ROI"]}}  # fmt: skip


def _brush(rle):
    mask = np.zeros((32, 32), np.uint8)
    region = brush_result(mask, "r")
    region["value"]["rle"] = rle
    return region


def _mask():
    mask = np.zeros((32, 32), np.uint8)
    mask[4:10, 8:20] = 1
    return mask


def test_an_unreadable_annotation_is_named_and_the_others_are_read(monkeypatch):
    good = brush_result(_mask(), "good")
    rle = good["value"]["rle"]
    tasks = [
        _task(11, "a", _choice(["benign"]), good),
        _task(12, "b", _choice(["malignant"]), _brush(rle[: len(rle) // 2])),  # a truncated RLE
        _task(13, "c", _choice(["benign"]), _box(y=10, width=20, height=20)),  # a rectangle without x
        _task(14, "d", _choice("benign")),  # choices as a string
        _task(15, "e", _choice(["malignant"]), _box(x=25.0, y=50.0, width=25.0, height=12.5)),
        _task(16, "f", _choice(["benign"]), _brush([0, 0, 16, 0, 1])),  # shorter than its header
        _task(17, "a", _choice("benign"), round_index=1),  # another round's: not read at all
    ]
    answered, drawn, unreadable = read_answers(tasks, META)
    assert answered == {"a": "benign", "e": "malignant"}
    np.testing.assert_array_equal(drawn["a"], _mask())
    box = np.zeros((32, 32), np.uint8)
    box[16:20, 8:16] = 1
    np.testing.assert_array_equal(drawn["e"], box)
    assert set(drawn) == {"a", "e"}
    assert unreadable == {
        "b": "Label Studio task 12 (b): a brush region whose RLE is truncated or corrupt",
        "c": "Label Studio task 13 (c): a rectangle whose x is None, not a number (percent of the image)",
        "d": "Label Studio task 14 (d): the class choice 'benign' is not a list",
        "f": "Label Studio task 16 (f): a brush region whose RLE is truncated (5 bytes, shorter than its "
        "header)",
    }


@pytest.mark.parametrize(
    "region, reason",
    [
        (_box(x="10", y=1, width=5, height=5), "a rectangle whose x is '10', not a number"),
        (_box(x=float("nan"), y=1, width=5, height=5), "a rectangle whose x is nan, not a number"),
        (_box(x=90, y=1, width=50, height=5), "lies outside the 32x32 image"),
        ({**_box(x=1, y=1, width=5, height=5), "original_width": 64}, "an ROI drawn on a 64x32 image"),
        (
            {"from_name": "roi", "type": "brushlabels", "value": None},
            "a 'brushlabels' region without a value",
        ),
        (_brush("AAAA"), "a brush region whose RLE is str, not a list of bytes"),
        ({**_brush([1]), "value": {"format": "png"}}, "a brush region in format 'png', not rle"),
        (_brush([0, 0, 16, 0, 57, 27, 300, 1]), "a brush region whose RLE is not a list of bytes"),
        (_brush([0, 0, 16, 0, 57, 27, 255] + [0] * 40000), "a brush region whose RLE is longer"),
        (
            _choice(["benign", "malignant"]),
            "class \\['benign', 'malignant'\\] is not one of benign, malignant",
        ),
        (_choice(["healthy\nbenign"]), "class \\['healthy\\\\nbenign'\\] is not one of"),
    ],
)
def test_each_malformed_region_is_one_line_naming_the_task(region, reason):
    answered, drawn, unreadable = read_answers([_task(7, "c", _choice(["benign"]), region)], META)
    assert not answered and not drawn
    [line] = unreadable.values()
    assert line.startswith("Label Studio task 7 (c): ") and "\n" not in line
    assert re.search(reason, line), line


def test_malformed_tasks_and_annotations_are_named_too():
    tasks = [
        {"id": 1, "data": {"id": "a", "round": 0}, "annotations": "not a list"},
        {"id": 2, "data": {"id": "b", "round": 0}, "annotations": [{"result": {"not": "a list"}}]},
        {"id": 3, "data": {"id": "c", "round": 0}, "annotations": [{"result": ["not a region"]}]},
        {"id": 4, "data": "not a mapping", "annotations": []},
        {"id": 5, "data": {"id": "d", "round": 0}, "annotations": [{"result": None}]},  # submitted empty
    ]
    answered, drawn, unreadable = read_answers(tasks, META)
    assert not answered and not drawn  # d: empty, never shown the pre-filled ROI: the pool's stays
    assert sorted(unreadable) == ["a", "b", "c"]


def test_a_brush_rle_declaring_more_pixels_than_the_scan_is_refused_before_decoding(monkeypatch):
    """A tiny RLE whose header declares 2^32 - 1 values (the most 32 bits hold, ~10^9 pixels)
    is refused by its header: the decoder is never called, nothing the size it declares is
    allocated."""
    import label_studio_sdk.converter.brush as brush

    decoded = []
    real = brush.decode_rle
    monkeypatch.setattr(
        brush, "decode_rle", lambda rle, *a, **k: decoded.append(len(rle)) or real(rle, *a, **k)
    )
    header = [0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0x00, 0x00, 0x00]  # 2^32 - 1 values of 8 bits, then nothing
    too_few = list((4 * 16 * 16).to_bytes(4, "big")) + [0x3F, 0, 0, 0]  # a 16x16 image's count
    tracemalloc.start()
    try:
        answered, _, unreadable = read_answers(
            [_task(21, "a", _choice(["benign"]), _brush(header)), _task(22, "b", _choice(["benign"]),
                                                                        _brush(too_few))], META
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not answered and not decoded
    assert peak < 10 * 2**20, f"{peak} bytes allocated"
    assert unreadable["a"] == (
        "Label Studio task 21 (a): a brush region whose RLE declares 4294967295 values, not the 4096 of "
        "the scan's 32x32 RGBA pixels: refused before decoding"
    )
    assert "declares 1024 values, not the 4096" in unreadable["b"]
    answered, drawn, _ = read_answers([_task(23, "a", _choice(["benign"]), brush_result(_mask(), "r"))], META)
    assert decoded and answered == {"a": "benign"}  # a well-formed one is decoded
    np.testing.assert_array_equal(drawn["a"], _mask())


def test_a_cold_start_task_says_so_instead_of_showing_the_draws_key_as_a_score(tmp_path):
    import numpy as np
    from helpers import blob_images

    from xgal.annotate.annotator import AnnotationRequest
    from xgal.annotate.folder import write_request
    from xgal.annotate.label_studio_tasks import round_tasks
    from xgal.pool.writer import PoolWriter

    ids = ["a1", "b2"]
    with PoolWriter(tmp_path / "pool", image_shape=(1, 16, 16), class_names=["x", "y"]) as w:
        w.add(ids, blob_images(2, 1, 16, seed=0), np.zeros((2, 16, 16), np.uint8), None)
    captions = {}
    for cold in (True, False):
        request = AnnotationRequest(
            1,
            blob_images(2, 1, 16, seed=0),
            np.zeros((2, 16, 16), np.uint8),
            ("x", "y"),
            str(tmp_path / "pool"),
        )
        request.probs, request.cold_start = np.array([[0.7, 0.3], [0.4, 0.6]]), cold
        request.ranking = {i: {"score": 0.123, "uncertainty": 0.5, "misalignment": 1.0} for i in ids}
        folder = tmp_path / f"run-{cold}" / "round-1"
        write_request(folder, ids, request)
        captions[cold] = round_tasks(folder, tmp_path, folder)[0]["data"]["caption"]
    assert "chosen by the cold start" in captions[True] and "0.123" not in captions[True]
    assert "xgal score 0.123" in captions[False]


def test_a_blank_annotation_keeps_the_pools_roi_and_a_deleted_prefill_removes_it():
    """No ROI in an annotation started from xgal's pre-filled prediction means the radiologist
    deleted it; in one that never showed it (predictions hidden, a blank annotation) it means
    nothing was drawn, and the pool's ROI stays (it is not in `drawn`)."""
    deleted = _task(21, "a", _choice(["benign"]))
    deleted["annotations"][0]["parent_prediction"] = 7
    blank = _task(22, "b", _choice(["benign"]))
    answered, drawn, _ = read_answers([deleted, blank], META)
    assert answered == {"a": "benign", "b": "benign"}
    assert set(drawn) == {"a"} and not drawn["a"].any()


def test_a_scan_in_two_tasks_is_answered_by_its_newest_annotation_whichever_task_holds_it():
    old = _task(31, "a", _choice(["benign"]))
    new = _task(32, "a", _choice(["malignant"]))
    old["annotations"][0]["updated_at"], new["annotations"][0]["updated_at"] = "2026-12-01", "2026-12-02"
    for order in ([old, new], [new, old]):
        assert read_answers(order, META)[0] == {"a": "malignant"}


def test_the_predicted_roi_is_offered_where_the_pool_has_none_and_the_correction_is_recorded(tmp_path):
    from helpers import blob_images
    from label_studio_sdk.converter.brush import decode_rle

    from xgal.annotate.annotator import AnnotationRequest
    from xgal.annotate.answers import save_answers
    from xgal.annotate.folder import write_request
    from xgal.annotate.label_studio_tasks import round_tasks
    from xgal.core.spreadsheet import read_rows
    from xgal.pool.writer import PoolWriter

    ids = ["a1", "b2", "c3"]
    pool_rois = np.zeros((3, 16, 16), np.uint8)
    pool_rois[2, 2:6, 2:6] = 1  # the expert drew on c3: nothing is offered there
    with PoolWriter(tmp_path / "pool", image_shape=(1, 16, 16), class_names=["x", "y"]) as w:
        w.add(ids, blob_images(3, 1, 16, seed=0), pool_rois, None)
    predicted = np.zeros((3, 16, 16), np.uint8)
    predicted[0, 4:10, 4:10] = 1  # 36 pixels offered on a1; b2's head found nothing
    scans = blob_images(3, 1, 16, seed=0)
    request = AnnotationRequest(1, scans, pool_rois, ("x", "y"), str(tmp_path / "pool"))
    request.probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    request.hint_rois = np.where(pool_rois.any(axis=(1, 2))[:, None, None], pool_rois, predicted)
    request.hint_sources = np.array([3, 3, 1], np.uint8)  # learned, learned (empty), expert
    folder = tmp_path / "run" / "round-1"
    write_request(folder, ids, request)
    tasks = round_tasks(folder, tmp_path, folder)
    brushes = [[r for r in t["predictions"][0]["result"] if r["type"] == "brushlabels"] for t in tasks]
    offered = decode_rle(brushes[0][0]["value"]["rle"]).reshape(16, 16, 4)[..., 3] > 0
    np.testing.assert_array_equal(offered, predicted[0] > 0)
    assert "ROI pre-filled by the model" in tasks[0]["data"]["caption"]
    assert brushes[1] == [] and "pre-filled" not in tasks[1]["data"]["caption"]
    assert "pre-filled" not in tasks[2]["data"]["caption"]  # the pool's own ROI, as before
    # The radiologist moves the offer two columns right: 12 pixels painted, 12 erased.
    corrected = np.zeros((16, 16), np.uint8)
    corrected[4:10, 6:12] = 1
    answered = {s: "x" for s in ids}
    save_answers(tmp_path / "run", folder, answered, {"a1": corrected}, partial=False, source="t")
    rows = read_rows(folder / "roi_corrections.csv")
    assert rows == [{"id": "a1", "prefilled": "36", "returned": "36", "changed": "24", "saved": "12"}]
    answers = np.load(folder / "answers.npz")
    np.testing.assert_array_equal(answers["rois"][0], corrected)  # the radiologist's, not the offer
    assert not answers["rois"][1].any()  # nothing offered, nothing drawn: no ROI


def test_offered_rois_are_read_as_data_only(tmp_path):
    from xgal.annotate.corrections import read_prefill
    from xgal.core.durable import npz_bytes
    from xgal.core.errors import InvalidArgument

    meta = {"ids": ["a", "b"], "image_size": [8, 8]}
    masks = np.zeros((1, 8, 8), np.uint8)
    masks[0, 2:4, 2:4] = 1
    (tmp_path / "elsewhere.npz").write_bytes(npz_bytes(True, ids=np.array(["b"]), rois=masks))
    assert not read_prefill(tmp_path, meta).any()  # no file: nothing offered
    (tmp_path / "prefill_rois.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(InvalidArgument, match="prefill_rois.npz cannot be read"):
        read_prefill(tmp_path, meta)  # a planted link is not followed
    (tmp_path / "prefill_rois.npz").unlink()
    (tmp_path / "prefill_rois.npz").write_bytes((tmp_path / "elsewhere.npz").read_bytes())
    np.testing.assert_array_equal(read_prefill(tmp_path, meta)[1], masks[0])
    # Zeros that inflate past what two 8x8 masks can be: refused before they are inflated.
    big = npz_bytes(True, ids=np.array(["a"]), rois=np.zeros((1, 8, 8 * 100_000), np.uint8))
    (tmp_path / "prefill_rois.npz").write_bytes(big)
    with pytest.raises(InvalidArgument, match="larger than the round's ROIs can be"):
        read_prefill(tmp_path, meta)
    # A header that declares more than the file holds: refused before np.load allocates it.
    ids, rois = io.BytesIO(), io.BytesIO()
    np.save(ids, np.array(["a"]))
    np.lib.format.write_array_header_1_0(rois, {"descr": "|u1", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(tmp_path / "prefill_rois.npz", "w") as z:
        z.writestr("ids.npy", ids.getvalue())
        z.writestr("rois.npy", rois.getvalue())
    with pytest.raises(InvalidArgument, match="larger than the round's ROIs can be"):
        read_prefill(tmp_path, meta)
    (tmp_path / "prefill_rois.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgument, match="is not the round's offered ROIs"):
        read_prefill(tmp_path, meta)
