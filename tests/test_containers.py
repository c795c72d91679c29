"""The container files, checked by parsing them (no Docker engine runs here): both Dockerfiles and
docker/compose.yaml against `xgal serve`'s real options, pyproject's extras and each other."""

import functools
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

import xgal.cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
EXTRA = {"cpu": "scorer", "gpu": "gpu"}  # the one extra each image installs
ORT_WHEELS = {"onnxruntime", "onnxruntime-gpu"}  # both write the `onnxruntime` package


def parse_dockerfile(path):
    """[(INSTRUCTION, arguments)], with line continuations joined and comments dropped (Docker
    also drops comment and blank lines inside a continuation)."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path.name} ends inside a line continuation"
    return instructions


def words(args):
    """An instruction's arguments: the exec form (a JSON array) or the shell form."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def last(instructions, keyword):
    found = [args for kw, args in instructions if kw == keyword]
    assert found, f"no {keyword}"
    return found[-1]


def values(argv, flag):
    """Every value given to `flag` in an argument list (`--flag v` or `--flag=v`)."""
    out = []
    for i, word in enumerate(argv):
        if word == flag:
            out.append(argv[i + 1])
        elif word.startswith(flag + "="):
            out.append(word.split("=", 1)[1])
    return out


def default(text):
    """Compose's `${VAR:-default}`, with the default."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(text))


@functools.cache
def cli_options(*path):
    command = typer.main.get_command(xgal.cli.app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def serve_argv(kind):
    """The ENTRYPOINT and CMD together: the `xgal serve` command line the container runs."""
    instructions = parse_dockerfile(DOCKERFILES[kind])
    argv = words(last(instructions, "ENTRYPOINT")) + words(last(instructions, "CMD"))
    assert argv[:2] == ["xgal", "serve"], argv
    return argv


def compose():
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_of(service):
    build = service["build"]
    return (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()


def service_of(kind):
    """The compose service built from this Dockerfile."""
    for name, service in compose()["services"].items():
        if dockerfile_of(service) == DOCKERFILES[kind]:
            return name, service
    raise AssertionError(f"no compose service builds {DOCKERFILES[kind].name}")


def port_pairs(service):
    """[(host ports, container port)] of a compose service's `ports`."""
    pairs = []
    for spec in service.get("ports", []):
        *_, host, container = default(spec).split("/")[0].split(":")
        low, _, high = host.partition("-")
        pairs.append((set(range(int(low), int(high or low) + 1)), int(container)))
    return pairs


def extras_closure(extras, table):
    """The requirements an install of `.[extras]` pulls in, following `xgal[...]` self-references."""
    reqs, todo = set(), list(extras)
    while todo:
        extra = todo.pop()
        assert extra in table, f"extra {extra!r} is not in pyproject.toml"
        for req in table[extra]:
            name, _, inner = re.match(r"([\w.-]+)(\[([^]]*)\])?", req).groups()
            if name == "xgal":
                todo += [e.strip() for e in inner.split(",")]
            else:
                reqs.add(name.lower())
    return reqs


KINDS = pytest.mark.parametrize("kind", sorted(DOCKERFILES))


@KINDS
def test_runs_as_a_non_root_user(kind):
    instructions = parse_dockerfile(DOCKERFILES[kind])
    user = last(instructions, "USER").split(":")[0]
    assert user not in {"root", "0"}, user
    uids = [m for kw, args in instructions if kw == "RUN" for m in re.findall(r"--uid (\d+)", args)]
    assert uids and all(int(uid) >= 1000 for uid in uids), uids


@KINDS
def test_every_flag_is_a_real_serve_option(kind):
    known = cli_options("serve")
    argv = serve_argv(kind)
    _, service = service_of(kind)
    flags = [w.split("=")[0] for w in argv + list(service.get("command", [])) if w.startswith("--")]
    assert flags and not set(flags) - known, f"not options of `xgal serve`: {set(flags) - known}"
    assert values(argv, "--host") == ["0.0.0.0"], "a container must bind every interface"
    assert values(argv, "--data-root") == ["/data"] and values(argv, "--model-repo") == ["/models"]


@KINDS
def test_healthcheck_asks_the_port_that_is_served(kind):
    instructions = parse_dockerfile(DOCKERFILES[kind])
    options, cmd = re.fullmatch(r"(.*?)\s*CMD\s+(.*)", last(instructions, "HEALTHCHECK")).groups()
    check = words(cmd)
    assert check[:3] == ["xgal", "client", "health"], check
    flags = {w.split("=")[0] for w in check if w.startswith("--")}
    assert flags <= cli_options("client", "health"), flags
    port = values(serve_argv(kind), "--port")
    assert port and [t.rsplit(":", 1)[1] for t in values(check, "--target")] == port[-1:]
    assert "--interval=" in options and "--timeout=" in options


@KINDS
def test_exposed_ports_are_the_served_ones_and_composes(kind):
    instructions = parse_dockerfile(DOCKERFILES[kind])
    exposed = {int(p.split("/")[0]) for kw, args in instructions if kw == "EXPOSE" for p in args.split()}
    argv = serve_argv(kind)
    served = {int(values(argv, flag)[-1]) for flag in ("--port", "--metrics-port")}
    assert exposed == served, (exposed, served)
    _, service = service_of(kind)
    assert {container for _, container in port_pairs(service)} == exposed


@KINDS
def test_installs_one_onnx_runtime_from_a_real_extra(kind):
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    runs = [args for kw, args in parse_dockerfile(DOCKERFILES[kind]) if kw == "RUN"]
    targets = [m for args in runs for m in re.findall(r"pip install (?:-\S+ )*[\"']?\.\[([^]]*)\]", args)]
    assert targets, "no `pip install .[extra]`"
    for target in targets:
        extras = {e.strip() for e in target.split(",")}
        assert extras == {EXTRA[kind]}, extras
        assert len(extras_closure(extras, table) & ORT_WHEELS) == 1, "two ONNX Runtime wheels"
    assert "onnxruntime-gpu" in extras_closure({"gpu"}, table)


@KINDS
def test_data_is_read_only_and_models_a_volume(kind):
    instructions = parse_dockerfile(DOCKERFILES[kind])
    assert "/models" in words(last(instructions, "VOLUME"))
    assert last(instructions, "STOPSIGNAL") == "SIGTERM"
    _, service = service_of(kind)
    mounts = [default(v) for v in service["volumes"]]
    assert any(m.endswith(":/data:ro") for m in mounts) and "models:/models" in mounts, mounts


def test_the_gpu_image_serves_on_cuda_first():
    instructions = parse_dockerfile(DOCKERFILES["gpu"])
    assert last(instructions, "FROM").startswith("nvidia/cuda:13.")
    assert values(serve_argv("gpu"), "--provider")[:1] == ["CUDAExecutionProvider"]
    assert not values(serve_argv("cpu"), "--provider")


def test_the_gpu_service_is_behind_its_profile_and_reserves_a_gpu():
    _, cpu = service_of("cpu")
    assert not cpu.get("profiles"), "`docker compose up` must start the CPU replicas"
    _, gpu = service_of("gpu")
    assert gpu.get("profiles") == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["driver"], d["capabilities"]) for d in devices] == [("nvidia", ["gpu"])], devices
    assert int(default(devices[0]["count"])) >= 1


def test_services_build_files_that_exist_and_ports_do_not_clash():
    taken = {}
    for name, service in compose()["services"].items():
        assert dockerfile_of(service).is_file(), name
        assert (COMPOSE.parent / service["build"]["context"] / "pyproject.toml").is_file(), name
        for hosts, _ in port_pairs(service):
            clash = {port: taken[port] for port in hosts if port in taken}
            assert not clash, f"{name} publishes host ports taken by {clash}"
            taken.update(dict.fromkeys(hosts, name))
        replicas = int(default(service.get("deploy", {}).get("replicas", 1)))
        assert all(len(hosts) >= replicas for hosts, _ in port_pairs(service)), name
