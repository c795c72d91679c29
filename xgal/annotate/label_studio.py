"""`xgal label-studio push|pull`: a run's open round in Label Studio, and the answers back.

`push` creates the run's project the first time (its labelling interface from the run's class
names, and a local-files storage over the run folder so that Label Studio serves the scans and
hints from disk) and remembers it in `RUN/label-studio.json`; later pushes update the same
project and add the open round's tasks (a task already there is not added twice). `pull` reads
the submitted annotations of the open round and records them exactly as `xgal annotations
add` records a filled-in labels.csv (`answers.save_answers`): the same checks, the same
`answers.npz`, the same partial-round rule. What the tasks look like: `label_studio_tasks`.

Authentication is a Personal Access Token (Label Studio: Account & Settings), read from a file
so that it never appears in a shell history or a process list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xgal.annotate.answers import open_round, save_answers
from xgal.annotate.label_studio_tasks import MODEL_VERSION, label_config, read_answers, round_tasks
from xgal.annotate.layout import META
from xgal.core.durable import atomic_write
from xgal.core.errors import InvalidArgument, UserError

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

STATE = "label-studio.json"  # in the run folder: the Label Studio URL and project of this run
TITLE_MAX = 50  # Label Studio's limit on a project title
PAGE = 100  # tasks per page when listing a project


@dataclass(frozen=True)
class Pushed:
    project: int
    round_index: int
    added: int  # tasks added by this push
    present: int  # tasks of the round already in the project
    link: str  # the project's Data Manager


def connect(url: str, token_file: str | Path) -> LabelStudio:
    """A client for the Label Studio at `url`, checked: reachable and the token accepted."""
    try:
        import httpx
        from label_studio_sdk import LabelStudio
        from label_studio_sdk.core.api_error import ApiError
    except ImportError:
        raise UserError("xgal label-studio needs label-studio-sdk: pip install 'xgal[annotate]'") from None

    path = Path(token_file)
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path}")
    token = path.read_text().strip()
    if not token:
        raise InvalidArgument(f"{path} is empty: put a Label Studio Personal Access Token in it")
    try:
        # A Personal Access Token is exchanged for an access token as the client is made.
        client = LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=120)
        client.users.whoami()
    except httpx.HTTPError as e:
        raise InvalidArgument(f"cannot reach Label Studio at {url}: {e}") from None
    except ApiError as e:
        if e.status_code in (401, 403):
            raise InvalidArgument(
                f"Label Studio at {url} refused the token in {path} ({e.status_code}): give a "
                "Personal Access Token (Account & Settings > Personal Access Token)"
            ) from None
        raise InvalidArgument(f"Label Studio at {url} answered {e.status_code}: {e.body}") from None
    return client


def push(
    run: str | Path, url: str, token_file: str | Path, document_root: str | Path, *, title: str | None = None
) -> Pushed:
    """Put the open round of `run` into its Label Studio project (see the module doc)."""
    run = Path(run)
    folder = open_round(run)
    meta = json.loads((folder / META).read_text())
    root = Path(document_root)
    tasks = round_tasks(folder, root)  # checks every file lies under the document root first
    client = connect(url, token_file)
    project = _project(client, run, url, meta["class_names"], title or f"xgal {run.resolve().name}", root)
    present = {
        t["data"].get("id") for t in project_tasks(client, project) if t["data"].get("round") == meta["round"]
    }
    new = [t for t in tasks if t["data"]["id"] not in present]
    if new:
        client.projects.import_tasks(project, request=new)
    return Pushed(
        project, meta["round"], len(new), len(tasks) - len(new), f"{url.rstrip('/')}/projects/{project}/data"
    )


def pull(run: str | Path, url: str, token_file: str | Path, *, partial: bool = False) -> tuple[Path, int]:
    """Record the open round's submitted annotations from the run's project; returns the round
    folder and how many scans were answered (all of them, unless `partial`)."""
    run = Path(run)
    folder = open_round(run)
    meta = json.loads((folder / META).read_text())
    state = _state(run)
    if state is None:
        raise InvalidArgument(f"{run} has no Label Studio project yet: run xgal label-studio push first")
    _check_state(run, state, url)
    client = connect(url, token_file)
    answered, drawn = read_answers(project_tasks(client, state["project"]), meta)
    source = f"Label Studio project {state['project']} at {state['url']}"
    return folder, save_answers(run, folder, answered, drawn, partial=partial, source=source)


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


def _project(
    client: LabelStudio, run: Path, url: str, class_names: list[str], title: str, document_root: Path
) -> int:
    from label_studio_sdk.core.api_error import ApiError

    url = url.rstrip("/")
    state = _state(run)
    if state is not None:
        _check_state(run, state, url)
    config = label_config(class_names)
    if state is not None:
        try:  # the title is the user's to change in Label Studio; the interface and version are ours
            client.projects.update(state["project"], label_config=config, model_version=MODEL_VERSION)
            return int(state["project"])
        except ApiError as e:
            if e.status_code != 404:
                raise
    about = f"xgal run {run.resolve()}"
    project = client.projects.create(
        title=title, label_config=config, description=about, model_version=MODEL_VERSION
    )
    try:  # what lets Label Studio serve the run folder's pictures
        client.import_storage.local.create(
            project=project.id, path=str(run.resolve()), title="xgal run folder", use_blob_urls=False
        )
    except ApiError as e:
        client.projects.delete(project.id)  # no half-made project left behind for each retry
        raise InvalidArgument(
            f"Label Studio cannot serve files from {run.resolve()} ({e.status_code}: {e.body}); start it "
            "with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
            "set to a folder above the run, as seen from where Label Studio runs"
        ) from None
    state = {"url": url, "project": project.id, "run": str(run.resolve())}
    atomic_write(run / STATE, json.dumps(state, indent=1).encode())
    return int(project.id)


def _check_state(run: Path, state: dict[str, Any], url: str) -> None:
    if state["url"] != url.rstrip("/"):
        raise InvalidArgument(
            f"{run}'s rounds go to project {state['project']} on {state['url']}, not {url}; "
            f"remove {run / STATE} to start a new project there"
        )
    if state.get("run", str(run.resolve())) != str(run.resolve()):
        raise InvalidArgument(
            f"{run}'s project {state['project']} serves the pictures of {state['run']}, where the run "
            f"was when it was first pushed; move it back, or remove {run / STATE} to start a new project"
        )


def _state(run: Path) -> dict[str, Any] | None:
    path = run / STATE
    return json.loads(path.read_text()) if path.is_file() else None


def _plain(task: Any) -> dict[str, Any]:
    # Attributes, not task.dict(): the SDK types `annotations` as a string and warns on dumping
    # the list the server sends.
    annotations = getattr(task, "annotations", None) or []
    return {
        "id": task.id,
        "data": task.data or {},
        "annotations": [a if isinstance(a, dict) else a.dict() for a in annotations],
    }
