"""`xgal report OUT`: a run as one self-contained page, `OUT/report.html` (every picture inlined,
nothing fetched): the per-round table, the learning curves, per round of a folder hand-off the
scans asked about with their hints (scan, ROI, Grad-CAM, prediction), what chose them and what
the radiologist answered, and the settings as a table.

Everything read from the run folder is untrusted (a request.csv or state.json may have been
edited, an ID or class name may come from anyone): every string is HTML-escaped, numbers are
parsed and re-formatted (a cell that is not a number shows as n/a), hints are inlined only when
they are PNG files inside the run, and the page's Content-Security-Policy allows no script and
no fetch, so even a missed escape cannot run or load anything.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
from pathlib import Path

from xgal.annotate.layout import (
    ANSWERS,
    HINTS,
    META,
    PNG_SIGNATURE,
    REQUEST,
    file_name,
    round_folders,
    round_number,
)
from xgal.core.durable import atomic_write
from xgal.core.errors import InvalidArgument
from xgal.core.spreadsheet import read_rows

REPORT = "report.html"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 200px; font-size: 12px; overflow-wrap: anywhere; }
figure img { width: 200px; }
.settings th, .settings td { text-align: left; font-family: monospace; }
"""
# No script at all, pictures only as data: URLs, the one style block by its hash; base-uri and
# form-action are not covered by default-src. (frame-ancestors and sandbox are ignored in a
# <meta> and would log an error, so they are left out.)
CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'"
)


def _text(value: object) -> str:
    """Any value as HTML text, quotes escaped too, so it is safe in an attribute as well."""
    return html.escape(str(value), quote=True)


def _float(value: object) -> float:
    """A number from state.json or a CSV cell; NaN when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return math.nan
    try:
        x = float(value)
    except (ValueError, OverflowError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _number(value: object, digits: int = 3) -> str:
    x = _float(value)
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _curves(rounds: list[dict]) -> str | None:
    """The learning curves as an inline PNG; None when no round was evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (_float(r.get("labelled")), _float(r.get("accuracy")), _float(r.get("cam_dice"))) for r in rounds
    ]
    points = [p for p in points if not math.isnan(p[0])]  # a round whose count is no number
    if all(math.isnan(a) and math.isnan(d) for _, a, d in points):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, k, name in ((axes[0], 1, "test accuracy"), (axes[1], 2, "CAM-ROI Dice (test)")):
        if all(math.isnan(p[k]) for p in points):  # e.g. a test split without ROIs: say so
            ax.text(0.5, 0.5, f"no {name}:\nthe test split has no ROI", ha="center", va="center")
            ax.set_axis_off()
            continue
        ax.plot([p[0] for p in points], [p[k] for p in points], "o-")
        ax.set_xlabel("labelled scans")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return _png(buf.getvalue())


def _no_dice(rounds: list[dict]) -> bool:
    return all(math.isnan(_float(r.get("cam_dice"))) for r in rounds)


def _hint(out: Path, folder: Path, sample_id: str) -> bytes | None:
    """The scan's hint picture: a PNG file inside the run folder, else None (a symlink out of
    the run or a file that is not a PNG is never inlined)."""
    path = folder / HINTS / f"{file_name(sample_id)}.png"
    if not path.is_file() or not path.resolve().is_relative_to(out.resolve()):
        return None
    data = path.read_bytes()
    return data if data.startswith(PNG_SIGNATURE) else None


def _figure(out: Path, folder: Path, row: dict[str, str], cold_start: bool, answers: dict[str, str]) -> str:
    sample_id = row.get("id", "")
    data = _hint(out, folder, sample_id)
    if data is None:
        return ""
    lines = [f"#{_text(row.get('rank', ''))} {_text(sample_id)}"]
    if row.get("score") and cold_start:  # the cold start's score is a random draw's key
        lines.append(f"cold start (draw key {_number(row['score'])})")
    elif row.get("score"):
        lines.append(
            f"score {_number(row['score'])}, U {_number(row.get('uncertainty'))}, "
            f"M {_number(row.get('misalignment'))}"
        )
    if row.get("predicted"):
        lines.append(f"predicted {_text(row['predicted'])} ({_number(row.get('probability'), 2)})")
    if sample_id in answers:
        lines.append(f"<b>answered: {_text(answers[sample_id])}</b>")
    return (
        f'<figure><img src="{_png(data)}" alt="{_text(sample_id)}">'
        f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>"
    )


def _round_section(out: Path, n: int, folder: Path) -> str:
    try:
        rows = read_rows(folder / REQUEST)
    except (OSError, ValueError, csv.Error) as e:  # ValueError: not UTF-8
        raise InvalidArgument(f"{folder / REQUEST} cannot be read as a request: {e}") from e
    cold_start, answers = _cold_start(folder), _answers(folder)
    figures = "".join(_figure(out, folder, row, cold_start, answers) for row in rows)
    what = "the initial set" if n == 0 else f"chosen by the model of round {n - 1}"
    chosen_by = rows[0].get("chosen_by", "") if rows else ""
    return (
        f'<section class="round"><h2>Round {n}: {len(rows)} scans, {what}</h2>'
        + (f"<p>{_text(chosen_by[:1].upper() + chosen_by[1:])}.</p>" if chosen_by else "")
        + f'<div class="grid">{figures}</div></section>'
    )


def _answers(folder: Path) -> dict[str, str]:
    """What the radiologist answered for each scan of the round (a class name, or "left
    unanswered"); empty while the round is open or when its files cannot be read."""
    import numpy as np

    try:
        meta = json.loads((folder / META).read_text())
        names = [str(n) for n in meta["class_names"]]
        with np.load(folder / ANSWERS, allow_pickle=False) as stored:
            ids, labels = stored["ids"].tolist(), stored["labels"].tolist()
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        str(i): names[k] if 0 <= k < len(names) else "left unanswered"
        for i, k in zip(ids, labels, strict=False)
    }


def _settings(config: object, prefix: str = "") -> list[tuple[str, str]]:
    """The run's settings as (name, value) rows, nested settings as dotted names."""
    if not isinstance(config, dict):
        return [(prefix or "settings", json.dumps(config))]
    rows: list[tuple[str, str]] = []
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        rows += _settings(value, name) if isinstance(value, dict) else [(name, json.dumps(value))]
    return rows


def _settings_table(config: object) -> str:
    rows = "".join(f"<tr><th>{_text(k)}</th><td>{_text(v)}</td></tr>" for k, v in _settings(config))
    return f'<table class="settings">{rows}</table>'


def _cold_start(folder: Path) -> bool:
    """Whether the round's request.json says the cold start chose it (False when unreadable)."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("cold_start") is True


def _state(out: Path) -> dict:
    """state.json, checked for the shape the page needs (an object whose rounds are objects)."""
    path = out / "state.json"
    if not path.is_file():
        raise InvalidArgument(f"{out} holds no run (no state.json): run xgal train --out {out} first")
    try:
        state = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:
        raise InvalidArgument(f"{path} is not a run's state: {e}") from e
    rounds = state.get("rounds", []) if isinstance(state, dict) else None
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise InvalidArgument(f"{path} is not a run's state: no list of rounds")
    return state


def _learned(rounds: list[dict]) -> bool:
    """Some round measured a learned ROI's Dice (the run's classifier has an ROI head)."""
    return any(not math.isnan(_float(r.get("roi_dice"))) for r in rounds)


def _table(rounds: list[dict]) -> str:
    learned = _learned(rounds)
    head = ["round", "labelled", "accuracy", "macro-F1", "CAM-ROI Dice"]
    head += ["learned ROI Dice"] * learned + ["model version", "seconds"]
    cells = (
        "".join(
            f"<td>{c}</td>"
            for c in (
                _text(r.get("round", "")),
                _text(r.get("labelled", "")),
                _number(r.get("accuracy")),
                _number(r.get("macro_f1")),
                _number(r.get("cam_dice")),
                *([_number(r.get("roi_dice"))] if learned else []),
                _text(r.get("model_version", "")),
                _number(r.get("seconds", 0), 1),
            )
        )
        for r in rounds
    )
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<tr>{header}</tr>" + "".join(f"<tr>{row}</tr>" for row in cells)


def write_report(out: str | Path) -> Path:
    """Write `OUT/report.html` from the run folder `out`; returns its path."""
    out = Path(out)
    state = _state(out)
    rounds = state["rounds"]
    curves = _curves(rounds) if rounds else None
    names = state.get("class_names", [])
    classes = _text(", ".join(map(str, names)) if isinstance(names, list) else names)
    name = _text(out.resolve().name)
    page = [
        f'<!doctype html><html lang="en"><head><meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f'<meta charset="utf-8"><title>xgal run {name}</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>xgal run <code>{name}</code></h1>",
        f"<p>{len(rounds)} rounds recorded; classes: {classes}.</p>",
        f"<h2>Rounds</h2><table>{_table(rounds)}</table>",
        f'<img alt="learning curves" src="{curves}">'
        if curves
        else "<p>No test split: no learning curves.</p>",
        "<p>No CAM-ROI Dice: the test split has no ROI.</p>" if curves and _no_dice(rounds) else "",
        *(_round_section(out, round_number(p) or 0, p) for p in round_folders(out, REQUEST)),
        "<h2>Settings</h2>" + _settings_table(state.get("config", {})),
        "</body></html>",
    ]
    path = out / REPORT
    atomic_write(path, "\n".join(page).encode("utf-8"))
    return path
