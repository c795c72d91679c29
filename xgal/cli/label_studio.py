"""`xgal label-studio`: a run's open round as a Label Studio project, and its annotations back
(the same records as `xgal annotations add`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from xgal.cli.common import App, out

app = App(help="Annotate a run's rounds in Label Studio (push the open round, pull the answers).")

URL = typer.Option("http://127.0.0.1:8080", help="Label Studio's address.")
TOKEN = typer.Option(..., help="A file holding a Label Studio Personal Access Token (Account & Settings).")


@app.command("push")
def push(
    run: Path = typer.Argument(..., help="The run folder (xgal train --out) waiting for answers."),
    url: str = URL,
    token_file: Path = TOKEN,
    document_root: Path | None = typer.Option(
        None,
        help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, a folder above the run "
        "(default: that variable here).",
    ),
    title: str | None = typer.Option(None, help="The project's title (default: xgal <run folder name>)."),
) -> None:
    """Create or update the run's project and add the open round's scans as tasks: the scan,
    the Grad-CAM hint, the predicted class pre-selected, the pool's ROI as an editable brush
    region, xgal's score as the prediction score (sort the Data Manager by it). Label Studio
    serves the pictures from the run folder (local-files storage): nothing is uploaded."""
    from xgal.annotate.label_studio import push as push_round
    from xgal.core.errors import InvalidArgument

    root = document_root or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    if not root:
        raise InvalidArgument(
            "say where Label Studio serves local files from: --document-root, the folder its "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT names (it must hold the run folder)"
        )
    done = push_round(run, url, token_file, Path(root), title=title)
    out.print(
        f"round {done.round_index}: {done.added} tasks added to project {done.project}"
        + (f" ({done.present} already there)" if done.present else "")
        + f"; annotate them at {done.link}, then: xgal label-studio pull {run} --url {url} "
        f"--token-file {token_file}"
    )


@app.command("pull")
def pull(
    run: Path = typer.Argument(..., help="The run folder (xgal train --out) waiting for answers."),
    url: str = URL,
    token_file: Path = TOKEN,
    partial: bool = typer.Option(
        False, help="Close the round with the scans annotated; the rest stay unlabelled (asked again later)."
    ),
) -> None:
    """Record the open round's submitted annotations (the class; brush or rectangle ROIs where
    drawn) with the checks of `xgal annotations add`; then run the same `xgal train` again."""
    from xgal.annotate.label_studio import pull as pull_round

    folder, n = pull_round(run, url, token_file, partial=partial)
    out.print(f"recorded {n} answers for {folder.name}; run the same xgal train command to go on")
