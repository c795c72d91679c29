"""`xgal report OUT`: a run as one self-contained page, `OUT/report.html` (every picture inlined,
nothing fetched): the settings, the per-round table, the learning curves and, per round of a
folder hand-off, the scans asked about with their hints (scan, ROI, Grad-CAM, prediction).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from xgal.annotate.layout import HINTS, REQUEST, file_name, round_folders
from xgal.core.errors import InvalidArgument
from xgal.core.spreadsheet import read_rows

REPORT = "report.html"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 200px; font-size: 12px; }
figure img { width: 200px; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _number(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _curves(rounds: list[dict]) -> str | None:
    """The learning curves as an inline PNG; None when no round was evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["labelled"], r["accuracy"], r["cam_dice"]) for r in rounds]
    if all(math.isnan(a) and math.isnan(d) for _, a, d in points):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, k, name in ((axes[0], 1, "test accuracy"), (axes[1], 2, "CAM-ROI Dice (test)")):
        ax.plot([p[0] for p in points], [p[k] for p in points], "o-")
        ax.set_xlabel("labelled scans")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return _png(buf.getvalue())


def _round_section(folder: Path) -> str:
    rows = read_rows(folder / REQUEST)
    figures = []
    for row in rows:
        hint = folder / HINTS / f"{file_name(row['id'])}.png"
        if not hint.is_file():
            continue
        caption = f"#{row['rank']} {row['id']}"
        if row["score"]:
            u, m = float(row["uncertainty"]), float(row["misalignment"])
            caption += f"<br>score {float(row['score']):.3f}, U {u:.3f}, M {m:.3f}"
        if row["predicted"]:
            caption += f"<br>predicted {html.escape(row['predicted'])} ({float(row['probability']):.2f})"
        figures.append(
            f'<figure><img src="{_png(hint.read_bytes())}" alt="{html.escape(row["id"])}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    n = folder.name.split("-")[1]
    what = "the initial set" if n == "0" else f"chosen by the model of round {int(n) - 1}"
    return (
        f'<section class="round"><h2>Round {n}: {len(rows)} scans, {what}</h2>'
        f'<div class="grid">{"".join(figures)}</div></section>'
    )


def write_report(out: str | Path) -> Path:
    """Write `OUT/report.html` from the run folder `out`; returns its path."""
    out = Path(out)
    state_path = out / "state.json"
    if not state_path.is_file():
        raise InvalidArgument(f"{out} holds no run (no state.json): run xgal train --out {out} first")
    state = json.loads(state_path.read_text())
    rounds = state["rounds"]
    table = "".join(
        f"<tr><td>{r['round']}</td><td>{r['labelled']}</td><td>{_number(r['accuracy'])}</td>"
        f"<td>{_number(r['macro_f1'])}</td><td>{_number(r['cam_dice'])}</td>"
        f"<td>{r.get('model_version', '')}</td><td>{r.get('seconds', 0):.1f}</td></tr>"
        for r in rounds
    )
    curves = _curves(rounds) if rounds else None
    classes = html.escape(", ".join(state.get("class_names", [])))
    sections = round_folders(out, REQUEST)
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>xgal run {html.escape(out.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>xgal run <code>{html.escape(out.name)}</code></h1>",
        f"<p>{len(rounds)} rounds recorded; classes: {classes}.</p>",
        "<h2>Rounds</h2><table><tr><th>round</th><th>labelled</th><th>accuracy</th><th>macro-F1</th>"
        f"<th>CAM-ROI Dice</th><th>model version</th><th>seconds</th></tr>{table}</table>",
        f'<img alt="learning curves" src="{curves}">'
        if curves
        else "<p>No test split: no learning curves.</p>",
        *(_round_section(p) for p in sections),
        "<h2>Settings</h2><pre>" + html.escape(json.dumps(state["config"], indent=1)) + "</pre>",
        "</body></html>",
    ]
    path = out / REPORT
    path.write_text("\n".join(page))
    return path
