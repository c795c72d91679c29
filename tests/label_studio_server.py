"""A real Label Studio server on 127.0.0.1 for the hand-off test, from its own virtual environment
(scripts/label-studio-env.sh, which scripts/test.sh starts building in the background)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-label-studio"
START_TIMEOUT = 240  # seconds for /health to answer (a copied, migrated database: ~20 s here)


@dataclass
class LabelStudioServer:
    url: str
    token_file: Path  # a Personal Access Token, made as a user makes one (mode 0600)
    document_root: Path  # LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: runs live under it
    email: str
    password: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(root: Path) -> LabelStudioServer:
    """Build (or wait for) the server's environment, start a server whose data lives in `root`,
    and make a Personal Access Token through its login page and token API."""
    build = subprocess.run(
        ["bash", str(REPO / "scripts" / "label-studio-env.sh")], capture_output=True, text=True, timeout=1800
    )
    if build.returncode != 0:
        tail = f"{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
        raise RuntimeError(f"scripts/label-studio-env.sh failed:\n{tail}")
    data, docs = root / "label-studio-data", root / "files"
    shutil.copytree(VENV / "template", data)
    docs.mkdir(exist_ok=True)  # a run may be made there while the server starts
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    email, password = "radiologist@xgal.test", "xgal-test-password"
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(docs),
        "COLLECT_ANALYTICS": "false",
        # Its defaults send the server's and the web page's errors to HumanSignal's Sentry.
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }
    log = root / "label-studio.log"
    with open(log, "w") as f:
        process = subprocess.Popen(
            [str(VENV / "bin" / "label-studio"), "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-browser", "--username", email, "--password", password],
            stdout=f, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    server = LabelStudioServer(url, root / "token", docs, email, password, process, log)
    try:
        _wait_healthy(server)
        server.token_file.touch(mode=0o600)  # xgal refuses a token file others may read, as ssh does
        server.token_file.write_text(personal_access_token(server))
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: LabelStudioServer) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log.read_text()[-3000:]
            raise RuntimeError(f"Label Studio exited ({server.process.returncode}):\n{tail}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Label Studio did not answer in {START_TIMEOUT} s:\n{server.log.read_text()[-3000:]}")


@contextmanager
def login(server: LabelStudioServer) -> Iterator[httpx.Client]:
    """A browser's session: the login form, its CSRF cookie."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield _logged_in(server, client)


def _logged_in(server: LabelStudioServer, client: httpx.Client) -> httpx.Client:
    client.get("/user/login/")
    res = client.post(
        "/user/login/",
        data={
            "email": server.email,
            "password": server.password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
        headers={"Referer": f"{server.url}/user/login/"},
    )
    assert res.status_code == 302, res.text[:500]
    return client


def personal_access_token(server: LabelStudioServer) -> str:
    """What Account & Settings > Personal Access Token > Create does."""
    with login(server) as client:
        res = client.post(
            "/api/token/", headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{server.url}/"}
        )
        assert res.status_code == 201, res.text[:500]
        return res.json()["token"]
