"""`xgal label-studio`: a run's open round as a Label Studio project, and its annotations back
(the same records as `xgal annotations add`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markup import escape

from xgal.cli.answers import say_recorded
from xgal.cli.common import App, console, out

app = App(help="Annotate a run's rounds in Label Studio (push the open round, pull the answers).")

URL = typer.Option(
    "http://127.0.0.1:8080", help="Label Studio's address: https://, or http:// on this machine (localhost)."
)
TOKEN = typer.Option(
    ...,
    help="A file holding a Label Studio Personal Access Token (Account & Settings), readable by you "
    "only (chmod 600).",
)
ALLOW_HTTP = typer.Option(
    False, help="Send the token over plain http to another machine (a network you trust); off: https only."
)


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
    title: str | None = typer.Option(
        None, help="The project's title, 3 to 50 characters (default: xgal <run folder name>, cut to fit)."
    ),
    allow_http: bool = ALLOW_HTTP,
) -> None:
    """Create or update the run's project and add the open round's scans as tasks: the scan,
    the Grad-CAM hint, the predicted class pre-selected, the pool's ROI as an editable brush
    region, xgal's score as the prediction score (sort the Data Manager by it). Label Studio
    serves the pictures from RUN/label-studio (local-files storage over links to the round's
    pictures, nothing else of the run): nothing is uploaded."""
    from xgal.annotate.label_studio import push as push_round
    from xgal.core.errors import InvalidArgument

    root = document_root or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    if not root:
        raise InvalidArgument(
            "say where Label Studio serves local files from: --document-root, the folder its "
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT names (it must hold the run folder)"
        )
    with api_errors(url):
        done = push_round(run, url, token_file, Path(root), title=title, allow_http=allow_http)
    out.print(
        f"round {done.round_index}: {done.added} tasks added to project {done.project}"
        + (f" ({done.present} already there)" if done.present else "")
        + f"; annotate them at {done.link}, then: xgal label-studio pull {run} --url {url} "
        f"--token-file {token_file}" + (" --allow-http" if allow_http else "")
    )


@app.command("pull")
def pull(
    run: Path = typer.Argument(..., help="The run folder (xgal train --out) waiting for answers."),
    url: str = URL,
    token_file: Path = TOKEN,
    partial: bool = typer.Option(
        False, help="Close the round with the scans annotated; the rest stay unlabelled (asked again later)."
    ),
    allow_http: bool = ALLOW_HTTP,
) -> None:
    """Record the open round's submitted annotations (the class; brush or rectangle ROIs where
    drawn) with the checks of `xgal annotations add`; then run the same `xgal train` again. A task
    whose annotation cannot be read is named, with why, and counts as not answered."""
    from xgal.annotate.label_studio import pull as pull_round

    def warn(line: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)

    with api_errors(url):
        folder, n = pull_round(run, url, token_file, partial=partial, allow_http=allow_http, warn=warn)
    say_recorded(folder, n)


@contextmanager
def api_errors(url: str) -> Iterator[None]:
    """Label Studio's refusals as one line (its status and message), never a traceback: the
    SDK's exceptions carry the response's headers, a session cookie among them."""
    from xgal.core.errors import InvalidArgument

    try:
        from label_studio_sdk.core.api_error import ApiError
    except ImportError:  # connect() says how to install it
        yield
        return
    try:
        yield
    except ApiError as e:
        body = e.body if isinstance(e.body, str | dict | list) else ""
        raise InvalidArgument(f"Label Studio at {url} answered {e.status_code}: {str(body)[:300]}") from None
