"""deploy/k8s, checked by parsing (no cluster, kubectl or kustomize here): the base and the GPU
overlay, built by the small kustomize below, against `xgal serve`'s options, the Dockerfiles,
docker/compose.yaml, the health service's name and each other."""

import functools
import re
from pathlib import Path

import pytest
import typer
import yaml
from test_containers import DOCKERFILES, cli_options, last, parse_dockerfile, serve_argv, service_of, values
from test_containers import words as dockerfile_words

import xgal.cli
from xgal.v1 import scorer_pb2

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BUILDS = {"cpu": K8S / "base", "gpu": K8S / "overlays" / "gpu"}  # keyed as DOCKERFILES
# A CRD's kind (Prometheus operator, KubeRay): never in a kustomization.
EXAMPLES = {K8S / "base" / "servicemonitor.yaml", K8S / "ray" / "rayjob.yaml"}
NAME_MERGED = {"containers", "initContainers", "volumes", "env"}  # lists merged by `name`
KINDS = pytest.mark.parametrize("kind", sorted(BUILDS))


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def key(obj):
    return obj["kind"], obj["metadata"]["name"]


def merge(base, patch, field=None):
    """A strategic merge as far as these patches need one: maps merged key by key, lists of
    containers, volumes and env merged by name, every other list (args, tolerations) replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v, k) if k in base else v
        return out
    if field in NAME_MERGED and isinstance(base, list):
        out = list(base)
        for item in patch:
            at = [i for i, old in enumerate(out) if old["name"] == item["name"]]
            if at:
                out[at[0]] = merge(out[at[0]], item)
            else:
                out.append(item)
        return out
    return patch


@functools.cache
def build(directory):
    """{(kind, name): object}, what `kubectl kustomize directory` gives for these files."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        found = build(path) if path.is_dir() else {key(d): d for d in docs(path)}
        assert not set(found) & set(objects), f"{resource}: objects defined twice"
        objects.update(found)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"only strategic-merge patch files are built here: {patch}"
        for doc in docs(directory / patch["path"]):
            assert key(doc) in objects, f"{patch['path']} patches {key(doc)}, which is not built"
            objects[key(doc)] = merge(objects[key(doc)], doc)
    return objects


def the(kind, build_of="cpu", name=None):
    found = [o for (k, n), o in build(BUILDS[build_of]).items() if k == kind and name in (None, n)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the {build_of} build"
    return found[0]


def container(kind):
    (scorer,) = the("Deployment", kind)["spec"]["template"]["spec"]["containers"]
    return scorer


def argv(kind):
    return container(kind)["command"] + container(kind)["args"]


def pod_labels(kind):
    return the("Deployment", kind)["spec"]["template"]["metadata"]["labels"]


def selects(selector, labels):
    """A label selector (`matchLabels`, or a Service's plain map) matching these labels."""
    assert "matchExpressions" not in selector
    wanted = selector.get("matchLabels", selector)
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def cores(quantity):
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def serve_default(name):
    command = typer.main.get_command(xgal.cli.app).commands["serve"]
    return next(p.default for p in command.params if p.name == name)


def healthcheck(kind):
    """The Dockerfile's HEALTHCHECK command."""
    instructions = parse_dockerfile(DOCKERFILES[kind])
    return dockerfile_words(re.fullmatch(r".*?\s*CMD\s+(.*)", last(instructions, "HEALTHCHECK")).group(1))


def test_every_file_parses_and_is_built_or_an_example():
    files = sorted(K8S.rglob("*.y*ml"))
    assert files and {p.suffix for p in files} == {".yaml"}
    for path in files:
        for doc in docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert path.name == "kustomization.yaml" or doc["metadata"].get("name"), path
    used = set(EXAMPLES)
    for kustomization in K8S.rglob("kustomization.yaml"):
        used.add(kustomization)
        content = yaml.safe_load(kustomization.read_text())
        for ref in content.get("resources", []) + [p["path"] for p in content.get("patches", [])]:
            path = (kustomization.parent / ref).resolve()
            assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{kustomization}: {ref}"
            assert path not in EXAMPLES, f"{ref} needs a CRD the cluster may lack: keep it out"
            if path.is_file():
                used.add(path)
    assert set(files) == used, f"neither built nor an example: {set(files) - used}"
    for kind, directory in BUILDS.items():
        assert build(directory), kind


@KINDS
def test_the_command_line_is_xgal_serves_and_the_images(kind):
    scorer = container(kind)
    # `command` replaces the ENTRYPOINT: `args` alone would repeat its flags (and --provider's list).
    assert scorer["command"] == ["xgal", "serve"]
    assert all(isinstance(a, str) for a in scorer["args"]), "Kubernetes wants every arg a string"
    flags = {a.split("=")[0] for a in scorer["args"] if a.startswith("--")}
    unknown = flags - cli_options("serve")
    assert flags and not unknown, f"not options of `xgal serve`: {unknown}"
    image = serve_argv(kind)
    for flag in ("--host", "--port", "--metrics-port", "--data-root", "--model-repo", "--provider"):
        expected = values(image, flag) if flag == "--provider" else values(image, flag)[-1:]
        got = values(argv(kind), flag) if flag == "--provider" else values(argv(kind), flag)[-1:]
        assert got == expected, (flag, got, expected)
    resources = scorer["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
    threads = values(argv(kind), "--threads")
    assert threads and int(threads[-1]) == cores(resources["requests"]["cpu"]) > 0, "--threads != CPUs"


@KINDS
def test_the_image_is_the_one_compose_builds(kind):
    _, service = service_of(kind)
    assert container(kind)["image"].split("@")[0].split(":")[0] == service["image"]


@KINDS
def test_ports_agree_with_serve_expose_services_and_probes(kind):
    command = argv(kind)
    ports = {p["name"]: p["containerPort"] for p in container(kind)["ports"]}
    served = {"grpc": values(command, "--port")[-1], "metrics": values(command, "--metrics-port")[-1]}
    assert ports == {name: int(port) for name, port in served.items()}
    instructions = parse_dockerfile(DOCKERFILES[kind])
    exposed = {int(p.split("/")[0]) for kw, args in instructions if kw == "EXPOSE" for p in args.split()}
    assert set(ports.values()) == exposed
    services = [o for (k, _), o in build(BUILDS[kind]).items() if k == "Service"]
    for service in services:
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            target = ports[target] if isinstance(target, str) else target
            assert port["port"] == target == ports[port["name"]], (service["metadata"]["name"], port)
    scorer = container(kind)
    assert scorer["readinessProbe"]["grpc"]["port"] == ports["grpc"]  # a number: grpc probes take no names
    startup = scorer["startupProbe"]["tcpSocket"]["port"]
    assert ports.get(startup, startup) == ports["grpc"]
    (target,) = values(scorer["livenessProbe"]["exec"]["command"], "--target")
    assert int(target.rsplit(":", 1)[1]) == ports["grpc"]


@KINDS
def test_runs_as_the_images_user_without_privileges(kind):
    runs = [args for kw, args in parse_dockerfile(DOCKERFILES[kind]) if kw == "RUN"]
    uids = {uid for args in runs for uid in re.findall(r"--uid (\d+)", args)}
    pod = the("Deployment", kind)["spec"]["template"]["spec"]
    scorer = container(kind)
    context = {**pod["securityContext"], **scorer["securityContext"]}
    assert {str(context["runAsUser"])} == uids and context["runAsNonRoot"] is True
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in scorer["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], "a read-only root needs a /tmp"


@KINDS
def test_probes_ask_the_health_service_what_each_means(kind):
    scorer = container(kind)
    # Ready = SERVING for the Scorer service: a model loaded, not draining.
    readiness = scorer["readinessProbe"]["grpc"]
    assert readiness["service"] == scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
    # Alive = the health service answers at all. Kubelet's grpc probe passes on SERVING only, and
    # "" is NOT_SERVING until a model is loaded: as liveness it would restart a fresh replica forever.
    for probe in ("livenessProbe", "startupProbe"):
        assert "grpc" not in scorer[probe], f"{probe} must pass on a replica with no model yet"
    liveness = scorer["livenessProbe"]["exec"]["command"]
    assert liveness == healthcheck(kind) and "--serving" not in liveness, "not the image's HEALTHCHECK"
    assert scorer["livenessProbe"]["timeoutSeconds"] > float(values(liveness, "--timeout")[0])


@KINDS
def test_pools_are_read_only_and_models_shared(kind):
    command, pod = argv(kind), the("Deployment", kind)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container(kind)["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim") for v in pod["volumes"]}
    data = mounts[values(command, "--data-root")[-1]]
    assert data.get("readOnly") is True
    assert claims[data["name"]] == {"claimName": "xgal-pools", "readOnly": True}
    models = mounts[values(command, "--model-repo")[-1]]
    assert not models.get("readOnly") and claims[models["name"]] == {"claimName": "xgal-models"}
    assert "ReadWriteMany" in the("PersistentVolumeClaim", kind, "xgal-models")["spec"]["accessModes"]
    assert the("PersistentVolumeClaim", kind, "xgal-pools")


@KINDS
def test_the_kubelet_waits_longer_than_the_drain(kind):
    grace = values(argv(kind), "--grace")
    drain = float(grace[-1]) if grace else serve_default("grace")
    assert the("Deployment", kind)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


@KINDS
def test_autoscaler_budget_and_services_find_the_replicas(kind):
    deployment, labels = the("Deployment", kind), pod_labels(kind)
    assert selects(deployment["spec"]["selector"], labels)
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    hpa = the("HorizontalPodAutoscaler", kind)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = hpa["spec"]["metrics"]
    cpu = [m["resource"]["target"] for m in metrics if m.get("resource", {}).get("name") == "cpu"]
    assert [t["type"] for t in cpu] == ["Utilization"] and 0 < cpu[0]["averageUtilization"] <= 100
    pdb = the("PodDisruptionBudget", kind)
    assert selects(pdb["spec"]["selector"], labels)
    assert len({"minAvailable", "maxUnavailable"} & set(pdb["spec"])) == 1
    for (k, name), service in build(BUILDS[kind]).items():
        if k == "Service":
            assert service["spec"].get("clusterIP") == "None", f"{name} is not headless"
            assert selects(service["spec"]["selector"], labels), name
    scoring = the("Service", kind, "xgal-scorer")
    assert {p["name"] for p in scoring["spec"]["ports"]} == {"grpc", "metrics"}
    assert not scoring["spec"].get("publishNotReadyAddresses"), "scoring calls go to ready replicas only"
    assert the("Service", kind, "xgal-scorer-all")["spec"]["publishNotReadyAddresses"] is True


def test_the_service_monitor_example_scrapes_each_replica_once():
    (monitor,) = docs(K8S / "base" / "servicemonitor.yaml")
    assert monitor["kind"] == "ServiceMonitor"
    services = [o for (k, _), o in build(BUILDS["cpu"]).items() if k == "Service"]
    chosen = [s for s in services if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in chosen] == ["xgal-scorer"]
    ports = {p["name"] for p in chosen[0]["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"] and "metrics" in ports


def test_the_gpu_overlay_asks_for_a_gpu_and_keeps_the_base():
    gpu, cpu = container("gpu"), container("cpu")
    assert str(gpu["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    tolerations = the("Deployment", "gpu")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in tolerations)
    args = gpu["args"]
    providers = [i for i, a in enumerate(args) if a == "--provider"]
    rest = [a for i, a in enumerate(args) if i not in providers and i - 1 not in providers]
    assert rest == cpu["args"], "the overlay's args must repeat the base's (a patch replaces them)"
    for field in ("command", "ports", "volumeMounts", "securityContext", "readinessProbe", "livenessProbe"):
        assert gpu[field] == cpu[field], field


def test_the_ray_job_runs_xgal_score_on_the_ray_image_with_the_pinned_ray():
    """deploy/k8s/ray/rayjob.yaml: the entrypoint is `xgal score --ray auto` with options the
    command has, head and workers run the image docker/Dockerfile.ray builds, whose Ray is the
    version xgal pins and the cluster declares; pools are read-only; the results volume exists."""
    import shlex
    import tomllib

    job, claim = docs(K8S / "ray" / "rayjob.yaml")
    assert (job["kind"], claim["kind"]) == ("RayJob", "PersistentVolumeClaim")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["xgal", "score"] and values(argv, "--ray") == ["auto"]
    flags = {w.split("=")[0] for w in argv if w.startswith("--")}
    assert flags <= cli_options("score"), flags - cli_options("score")
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    version = pinned[0].split("==")[1]
    instructions = parse_dockerfile(ROOT / "docker" / "Dockerfile.ray")
    args = dict(a.split("=", 1) for kw, a in instructions if kw == "ARG" and "=" in a)
    base = last(instructions, "FROM").replace("${RAY_IMAGE}", args.get("RAY_IMAGE", ""))
    assert base == f"rayproject/ray:{version}-py311", base
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == version
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["image"].split(":")[0] == "xgal-ray"  # docker build -t xgal-ray
            assert container["imagePullPolicy"] == "IfNotPresent"  # an image loaded on the nodes
            pools = [m for m in container["volumeMounts"] if m["mountPath"] == "/data"]
            assert pools and all(m["readOnly"] for m in pools)
    head = pods[0]
    out = values(argv, "--out")[0]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    assert out.startswith("/results/") and mounts["/results"] == "results"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]}
    assert claims["results"] == claim["metadata"]["name"]
    assert values(argv, "--model")[0].startswith("/models/") and "/models" in mounts
