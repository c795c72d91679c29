"""`xgal label-studio push|pull`: a run's open round in Label Studio, and the answers back.

`push` creates the run's project the first time (its labelling interface from the run's class
names) and remembers it in `RUN/label-studio.json`; later pushes update the same project and
add the open round's tasks (a task already there is not added twice). Label Studio serves the
pictures from `RUN/label-studio/round-N/{scans,hints}/` (copies of the round's PNG pictures,
never a link: Label Studio would serve what a link points to) through a local-files storage
over `RUN/label-studio` only: the run's models, answers and state are never under it. `pull`
reads the submitted annotations of the open round and records them exactly as `xgal annotations
add` records a filled-in
labels.csv (`answers.save_answers`): the same checks, the same `answers.npz`, the same
partial-round rule; a task whose annotation cannot be read counts as not answered and is named
with the reason. What the tasks look like:
`label_studio_tasks`; the connection and the token's checks: `label_studio_client`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xgal.annotate.answers import open_round, save_answers
from xgal.annotate.label_studio_client import check_url, connect, read_token
from xgal.annotate.label_studio_tasks import (
    MODEL_VERSION,
    label_config,
    read_answers,
    round_tasks,
)
from xgal.annotate.layout import HINTS, META, PNG_SIGNATURE, SCANS, file_name
from xgal.core.durable import atomic_write
from xgal.core.errors import InvalidArgument

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

__all__ = ["Pushed", "connect", "project_tasks", "project_title", "pull", "push", "serve_round"]

log = logging.getLogger(__name__)

STATE = "label-studio.json"  # in the run folder: the Label Studio URL and project of this run
SERVED = "label-studio"  # in the run folder: the pictures Label Studio may serve, round by round
TITLE_MIN, TITLE_MAX = 3, 50  # Label Studio's limits on a project title
PAGE = 100  # tasks per page when listing a project


@dataclass(frozen=True)
class Pushed:
    project: int
    round_index: int
    added: int  # tasks added by this push
    present: int  # tasks of the round already in the project
    link: str  # the project's Data Manager


def push(
    run: str | Path,
    url: str,
    token_file: str | Path,
    document_root: str | Path,
    *,
    title: str | None = None,
    allow_http: bool = False,
) -> Pushed:
    """Put the open round of `run` into its Label Studio project (see the module doc)."""
    url = check_url(url, allow_http)  # before anything else: the token goes nowhere it should not
    read_token(token_file)  # and is for its owner's eyes only: checked before any file is linked
    run = Path(run)
    title = project_title(run, title)
    folder = open_round(run)
    meta = json.loads((folder / META).read_text())
    root = Path(document_root)
    served = _served(run) / folder.name
    tasks = round_tasks(folder, root, served)  # checks every file lies under the document root first
    serve_round(folder, served, meta["ids"])
    client = connect(url, token_file, allow_http=allow_http)
    project = _project(client, run, url, meta["class_names"], title)
    existing = project_tasks(client, project)
    present = {t["data"].get("id") for t in existing if t["data"].get("round") == meta["round"]}
    new = [t for t in tasks if t["data"]["id"] not in present]
    if new:
        client.projects.import_tasks(project, request=new)
    return Pushed(project, meta["round"], len(new), len(tasks) - len(new), f"{url}/projects/{project}/data")


def pull(
    run: str | Path,
    url: str,
    token_file: str | Path,
    *,
    partial: bool = False,
    allow_http: bool = False,
    warn: Callable[[str], None] = log.warning,
) -> tuple[Path, int]:
    """Record the open round's submitted annotations from the run's project; returns the round
    folder and how many scans were answered (all of them, unless `partial`). A task whose
    annotation cannot be read counts as not answered: the refusal names it and why, or, with
    `partial`, `warn` gets one line for each."""
    url = check_url(url, allow_http)
    run = Path(run)
    folder = open_round(run)
    meta = json.loads((folder / META).read_text())
    state = _state(run)
    if state is None:
        raise InvalidArgument(f"{run} has no Label Studio project yet: run xgal label-studio push first")
    _check_state(run, state, url)
    client = connect(url, token_file, allow_http=allow_http)
    answered, drawn, unreadable = read_answers(project_tasks(client, state["project"]), meta)
    source = f"Label Studio project {state['project']} at {state['url']}"
    try:
        n = save_answers(run, folder, answered, drawn, partial=partial, source=source)
    except InvalidArgument as e:
        if not unreadable:
            raise
        why = "\n".join(f"  unreadable: {line}" for line in unreadable.values())
        raise InvalidArgument(f"{e}\n{why}") from None
    for line in unreadable.values():
        warn(f"recorded as unanswered: {line}")
    return folder, n


def project_title(run: Path, title: str | None = None) -> str:
    """`title` once within Label Studio's limits, or `xgal <run folder name>`, its start cut
    (`xgal …<end>`: run names usually differ at the end) to fit."""
    if title is not None:
        if not TITLE_MIN <= len(title) <= TITLE_MAX:
            raise InvalidArgument(
                f"--title is {len(title)} characters; Label Studio takes {TITLE_MIN} to {TITLE_MAX}"
            )
        return title
    name = run.resolve().name
    title = f"xgal {name}"
    return title if len(title) <= TITLE_MAX else f"xgal …{name[-(TITLE_MAX - len('xgal …')) :]}"


def serve_round(folder: Path, served: Path, ids: list[str]) -> None:
    """Copy the round's scan and hint of each of `ids` into `served` (`{scans,hints}/`): the
    bytes of a PNG file, read without following a link (Label Studio serves whatever a link in
    its folder points to, so a link planted among the round's pictures must never get there)."""
    _no_links(served.parent)  # the whole of RUN/label-studio: what the storage covers
    for sub in (SCANS, HINTS):
        (served / sub).mkdir(parents=True, exist_ok=True)
        for sample_id in ids:
            name = f"{file_name(sample_id)}.png"
            atomic_write(served / sub / name, _png_file(folder / sub / name))


def _png_file(path: Path) -> bytes:
    """The bytes of `path`, a PNG file and not a link; else an InvalidArgument naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the round's pictures are incomplete") from None
    except OSError:  # ELOOP: a link
        raise InvalidArgument(f"{path} is a link, not one of the round's pictures; not served") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidArgument(f"{path} is not a PNG picture; not served")
    return data


def _no_links(served: Path) -> None:
    """Refuse a link anywhere under RUN/label-studio: Label Studio would serve what it points to."""
    for root, dirs, files in os.walk(served):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise InvalidArgument(
                    f"{os.path.join(root, name)} is a link: Label Studio would serve what it points to; "
                    f"remove it (only xgal writes under {served})"
                )


def project_tasks(client: LabelStudio, project: int) -> list[dict[str, Any]]:
    """Every task of the project as plain dicts, with their annotations."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        return [_plain(t) for t in client.tasks.list(project=project, fields="all", page_size=PAGE)]
    except ApiError as e:
        if e.status_code == 404:
            raise InvalidArgument(
                f"project {project} is gone from Label Studio; remove the run's {STATE} and push again"
            ) from None
        raise


def _served(run: Path) -> Path:
    """RUN/label-studio, a real folder inside the run (never a link that could widen what the
    storage over it serves)."""
    served = run / SERVED
    if served.is_symlink() or (served.exists() and not served.is_dir()):
        raise InvalidArgument(f"{served} must be a folder of its own (xgal makes it), not a link or a file")
    return served


def _project(client: LabelStudio, run: Path, url: str, class_names: list[str], title: str) -> int:
    from label_studio_sdk.core.api_error import ApiError

    state = _state(run)
    if state is not None:
        _check_state(run, state, url)
    config = label_config(class_names)
    if state is not None:
        try:  # the title is the user's to change in Label Studio; the interface and version are ours
            client.projects.update(state["project"], label_config=config, model_version=MODEL_VERSION)
        except ApiError as e:
            if e.status_code != 404:
                raise
        else:
            _storage(client, int(state["project"]), run)
            return int(state["project"])
    about = f"xgal run {run.resolve()}"
    project = client.projects.create(
        title=title, label_config=config, description=about, model_version=MODEL_VERSION
    )
    try:
        _storage(client, project.id, run)
    except BaseException:
        client.projects.delete(project.id)  # no half-made project left behind for each retry
        raise
    state = {"url": url, "project": project.id, "run": str(run.resolve())}
    atomic_write(run / STATE, json.dumps(state, indent=1).encode())
    return int(project.id)


def _storage(client: LabelStudio, project: int, run: Path) -> None:
    """The project's local-files storage over RUN/label-studio, what lets Label Studio serve the
    rounds' pictures and nothing else of the run."""
    from label_studio_sdk.core.api_error import ApiError

    served = os.path.normpath(_served(run).resolve())
    storages = client.import_storage.local.list(project=project)
    other = [s.path for s in storages if os.path.normpath(s.path or "") != served]
    if other:
        raise InvalidArgument(
            f"Label Studio project {project} also serves local files from {other[0]}: anything there can "
            "be read through it; remove that storage (project settings, Cloud Storage) and push again"
        )
    if not any(os.path.normpath(s.path or "") == served for s in storages):
        try:
            client.import_storage.local.create(
                project=project, path=served, title="xgal round pictures", use_blob_urls=False
            )
        except ApiError as e:
            raise InvalidArgument(
                f"Label Studio cannot serve files from {served} ({e.status_code}: {e.body}); start it "
                "with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to a folder above the run, as seen from where "
                "Label Studio runs"
            ) from None


def _check_state(run: Path, state: dict[str, Any], url: str) -> None:
    if state["url"] != url.rstrip("/"):
        raise InvalidArgument(
            f"{run}'s rounds go to project {state['project']} on {state['url']}, not {url}; "
            f"remove {run / STATE} to start a new project there"
        )
    if state["run"] != str(run.resolve()):
        raise InvalidArgument(
            f"{run}'s project {state['project']} serves the pictures of {state['run']}, where the run "
            f"was when it was first pushed; move it back, or remove {run / STATE} to start a new project"
        )


def _state(run: Path) -> dict[str, Any] | None:
    """RUN/label-studio.json as push wrote it (URL, project, run folder), None before a push."""
    path = run / STATE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        missing = [k for k in ("url", "project", "run") if k not in state]
    except (ValueError, TypeError):
        state, missing = None, ["url", "project", "run"]
    if missing:
        raise InvalidArgument(
            f"{path} is damaged (no {', '.join(missing)}): remove it to start a new project"
        )
    return state


def _plain(task: Any) -> dict[str, Any]:
    # Attributes, not task.dict(): the SDK types `annotations` as a string and warns on dumping
    # the list the server sends.
    annotations = getattr(task, "annotations", None) or []
    return {
        "id": task.id,
        "data": task.data or {},
        "annotations": [a if isinstance(a, dict) else a.dict() for a in annotations],
    }
