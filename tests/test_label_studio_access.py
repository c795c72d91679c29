"""What `xgal label-studio` checks about where things go, without a server: the token file's
permissions and where the token may go (both before any connection; no proxy, no redirect), the
project title of a long run name, errors said in one line without the response's headers, and
what Label Studio may serve (never a link). The same through a real server:
tests/test_label_studio.py; reading annotations: tests/test_label_studio_answers.py."""

import json
import socket

import pytest
from helpers import run_xgal as xgal


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and connection this process tries is recorded and refused."""
    tried = []

    def connect(sock, address):
        tried.append(address)
        raise ConnectionRefusedError(f"no network in this test ({address})")

    def getaddrinfo(host, *args, **kwargs):
        tried.append(host)
        raise socket.gaierror(socket.EAI_NONAME, f"no network in this test ({host})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return tried


def _run(tmp_path, url):
    """A run folder waiting for answers, already pushed to a project on `url`."""
    run = tmp_path / "run"
    (run / "round-0").mkdir(parents=True)
    (run / "round-0" / "request.json").write_text(json.dumps({"ids": [], "class_names": [], "round": 0}))
    (run / "label-studio.json").write_text(json.dumps({"url": url, "project": 1, "run": str(run.resolve())}))
    return run


def _token(tmp_path, mode=0o600):
    path = tmp_path / "ls.token"
    path.write_text("0123456789abcdef\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_may_read_is_refused(tmp_path, mode, no_network):
    from xgal.annotate.label_studio import pull, push
    from xgal.core.errors import InvalidArgument

    token = _token(tmp_path, mode)
    run = _run(tmp_path, "http://127.0.0.1:9")
    fix = rf"permissions {mode:04o} for the token file .* are too open: .*chmod 600 {token}$"
    with pytest.raises(InvalidArgument, match=fix):
        pull(run, "http://127.0.0.1:9", token)
    with pytest.raises(InvalidArgument, match=fix):
        push(run, "http://127.0.0.1:9", token, tmp_path)
    assert not no_network


def test_the_token_permission_refusal_through_the_cli(tmp_path):
    token = _token(tmp_path, 0o644)
    run = _run(tmp_path, "http://127.0.0.1:9")
    res = xgal("label-studio", "pull", run, "--url", "http://127.0.0.1:9", "--token-file", token, timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr, res.stderr
    assert "are too open" in res.stderr and f"chmod 600 {token}" in res.stderr
    token.chmod(0o600)  # the same command, the file made private: on to the (absent) server
    res = xgal("label-studio", "pull", run, "--url", "http://127.0.0.1:9", "--token-file", token, timeout=60)
    assert res.returncode == 2 and "cannot reach Label Studio at http://127.0.0.1:9" in res.stderr, res.stderr


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:8080", "http://labelstudio.hospital.example:8080", "http://[fe80::1]:8080",
            "http://127.0.0.1.example.org", "http://0.0.0.0:8080"]
)  # fmt: skip
def test_the_token_never_goes_over_plain_http_to_another_machine(tmp_path, url, no_network):
    from xgal.annotate.label_studio import pull, push
    from xgal.core.errors import InvalidArgument

    token = _token(tmp_path)
    run = _run(tmp_path, url)
    with pytest.raises(InvalidArgument, match=r"refusing to send the Label Studio token over plain http"):
        pull(run, url, token)
    with pytest.raises(InvalidArgument, match=r"use https://, or --allow-http"):
        push(run, url, token, tmp_path)
    assert not no_network  # refused before any connection
    with pytest.raises(InvalidArgument, match="cannot reach Label Studio"):  # allowed: it connects
        pull(run, url, token, allow_http=True)
    assert no_network


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://127.8.9.10:8080/", "http://localhost:8080", "http://[::1]:8080",
            "https://10.1.2.3:8443", "https://labelstudio.hospital.example"]
)  # fmt: skip
def test_https_anywhere_and_http_on_this_machine_go_ahead(tmp_path, url, no_network):
    from xgal.annotate.label_studio import pull
    from xgal.core.errors import InvalidArgument

    run = _run(tmp_path, url.rstrip("/"))
    with pytest.raises(InvalidArgument, match="cannot reach Label Studio"):
        pull(run, url, _token(tmp_path))
    assert no_network


def test_plain_http_to_another_machine_through_the_cli(tmp_path):
    """Refused at once (an unroutable address would otherwise hang until the client's timeout)."""
    token = _token(tmp_path)
    run = _run(tmp_path, "http://10.1.2.3:8080")
    for command in (["pull", run], ["push", run, "--document-root", tmp_path]):
        res = xgal(
            "label-studio", *command, "--url", "http://10.1.2.3:8080", "--token-file", token, timeout=60
        )
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().count("\n") == 0 and "--allow-http" in res.stderr, res.stderr


def test_a_long_run_name_keeps_its_end_in_the_title(tmp_path):
    from xgal.annotate.label_studio import TITLE_MAX, project_title
    from xgal.core.errors import InvalidArgument

    name = "brats2021-densenet121-prototypical-lambda0.3-alpha0.1-initial150-per-round120-seed7"
    title = project_title(tmp_path / name)
    assert len(name) > 80 and len(title) == TITLE_MAX
    assert title.startswith("xgal …") and name.endswith(title.removeprefix("xgal …"))
    assert project_title(tmp_path / "r1") == "xgal r1"
    assert project_title(tmp_path / name, "my project") == "my project"
    for bad in ("ab", "x" * (TITLE_MAX + 1)):
        with pytest.raises(InvalidArgument, match="Label Studio takes 3 to 50"):
            project_title(tmp_path, bad)


# -- annotations that cannot be read ---------------------------------------------------------------
def test_an_error_label_studio_answers_is_one_line_without_its_headers(monkeypatch):
    """The SDK's ApiError carries the response's headers (a session cookie among them): the CLI
    says the status and Label Studio's message only."""
    from label_studio_sdk.core.api_error import ApiError
    from typer.testing import CliRunner

    import xgal.annotate.label_studio as ls
    from xgal.cli import app

    def refused(*args, **kwargs):
        raise ApiError(
            status_code=400, headers={"set-cookie": "sessionid=SECRET"}, body={"title": ["too long"]}
        )

    monkeypatch.setattr(ls, "push", refused)
    res = CliRunner().invoke(
        app, ["label-studio", "push", "run", "--token-file", "t", "--document-root", "/"]
    )
    assert res.exit_code == 2 and "answered 400: {'title': ['too long']}" in res.output
    assert "SECRET" not in res.output and "Traceback" not in res.output


def test_the_token_goes_through_no_proxy_nor_redirect_and_keeps_a_path_prefix(tmp_path, monkeypatch):
    """HTTP_PROXY in the environment would carry the token in clear text, even to 127.0.0.1; a
    redirect could take it elsewhere; a Label Studio under https://host/ls/ gets its refresh there."""
    import httpx

    from xgal.annotate.label_studio_client import connect

    seen, handler_access = [], [""]

    def handler(request):
        seen.append(str(request.url))
        if request.url.path.endswith("/token/refresh/"):
            return httpx.Response(200, json={"access": handler_access[0]})
        return httpx.Response(307, headers={"location": "http://evil.example/steal"})

    class Client(httpx.Client):  # what xgal hands the SDK, answered by `handler`
        def __init__(self, **kwargs):
            assert kwargs.get("trust_env") is False and kwargs.get("follow_redirects") is False
            super().__init__(transport=httpx.MockTransport(handler), **kwargs)

    import time

    import jwt

    from xgal.core.errors import InvalidArgument

    monkeypatch.setattr(httpx, "Client", Client)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    token = tmp_path / "pat"  # a Personal Access Token is a refresh JWT
    key = "k" * 32  # HS256 wants 32 bytes
    token.write_text(jwt.encode({"token_type": "refresh", "exp": int(time.time()) + 3600}, key))
    token.chmod(0o600)
    access = jwt.encode({"token_type": "access", "exp": int(time.time()) + 3600}, key)
    seen.clear()
    handler_access[0] = access
    with pytest.raises(InvalidArgument, match="answered 307"):  # the redirect is not followed
        connect("https://labelstudio.example/ls", token)
    assert seen[0] == "https://labelstudio.example/ls/api/token/refresh/"
    assert seen[1] == "https://labelstudio.example/ls/api/current-user/whoami"
    assert not any("evil" in u for u in seen)


def test_a_link_among_the_rounds_pictures_is_never_put_where_label_studio_serves(tmp_path):
    """Label Studio's local-files view serves what a link in its folder points to: a planted link
    among the round's hints, or anywhere under RUN/label-studio, is refused by name, never copied."""
    from PIL import Image

    from xgal.annotate.label_studio import serve_round
    from xgal.core.errors import InvalidArgument

    secret = tmp_path / "secret.txt"
    secret.write_text("the run's token")
    folder = tmp_path / "run" / "round-1"
    for sub in ("scans", "hints"):
        (folder / sub).mkdir(parents=True)
        Image.new("L", (4, 4)).save(folder / sub / "a.png")
    served = tmp_path / "run" / "label-studio" / "round-1"
    serve_round(folder, served, ["a"])
    assert (served / "hints" / "a.png").read_bytes()[:4] == b"\x89PNG" and not (
        served / "hints" / "a.png"
    ).is_symlink()
    (folder / "hints" / "b.png").symlink_to(secret)
    Image.new("L", (4, 4)).save(folder / "scans" / "b.png")
    with pytest.raises(InvalidArgument, match=r"hints/b.png is a link, not one of the round's pictures"):
        serve_round(folder, served, ["a", "b"])
    assert not (served / "hints" / "b.png").exists()
    (folder / "hints" / "b.png").unlink()
    (folder / "hints" / "b.png").write_text("not a picture")
    with pytest.raises(InvalidArgument, match="is not a PNG picture"):
        serve_round(folder, served, ["b"])
    (served.parent / "round-9").symlink_to(tmp_path)  # a link planted in the served folder itself
    with pytest.raises(
        InvalidArgument, match="round-9 is a link: Label Studio would serve what it points to"
    ):
        serve_round(folder, served, ["a"])


def test_a_project_that_serves_another_folder_too_is_refused(tmp_path):
    """Label Studio serves whatever a project's local-files storages cover: a project that also
    has one over another folder (the whole run, say) is refused, naming that folder."""
    from types import SimpleNamespace

    from xgal.annotate.label_studio import _storage
    from xgal.core.errors import InvalidArgument

    run = tmp_path / "run"
    (run / "label-studio").mkdir(parents=True)
    served = SimpleNamespace(path=str((run / "label-studio").resolve()), id=1)
    whole = SimpleNamespace(path=str(run.resolve()), id=2)
    local = SimpleNamespace(list=lambda project: [served, whole], create=None)
    client = SimpleNamespace(import_storage=SimpleNamespace(local=local))
    with pytest.raises(InvalidArgument, match=f"also serves local files from {run.resolve()}"):
        _storage(client, 5, run)
    local.list = lambda project: [served]
    _storage(client, 5, run)  # its own storage only: fine


def test_a_damaged_project_file_is_refused_by_name(tmp_path, no_network):
    from xgal.annotate.label_studio import pull
    from xgal.core.errors import InvalidArgument

    run = _run(tmp_path, "http://127.0.0.1:9")
    (run / "label-studio.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "project": 1}))
    with pytest.raises(InvalidArgument, match=r"label-studio.json is damaged \(no run\)"):
        pull(run, "http://127.0.0.1:9", _token(tmp_path))
