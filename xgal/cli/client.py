"""`xgal client`: talk to running scorers. Imports the client only, never the scorer (a client
machine need not have ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from xgal.cli.common import (
    ALL_SCORES,
    EXCLUDE,
    OUTPUT,
    TARGETS,
    TLS_CA,
    TOKEN_FILE,
    TOP_K,
    App,
    acquisition_options,
    out,
    read_ids,
    read_token,
)
from xgal.cli.score import ON_BAD_SAMPLE
from xgal.core.acquisition import AcquisitionConfig
from xgal.core.samples import OnBadSample

app = App(help="Talk to running scorers.")


def connect(targets: list[str], token_file: Path | None, tls_ca: Path | None) -> Any:
    """A `ScorerClient` for the targets (a context manager)."""
    from xgal.client import ScorerClient

    return ScorerClient(targets, token=read_token(token_file), tls=tls_ca)


@app.command("publish")
def client_publish(
    model: Path = typer.Argument(..., help="Scoring graph (.onnx)."),
    name: str = typer.Option(..., help="Model name in the repository."),
    target: list[str] = TARGETS,
    token_file: Path | None = TOKEN_FILE,
    tls_ca: Path | None = TLS_CA,
) -> None:
    """Publish a scoring graph to every target."""
    with connect(target, token_file, tls_ca) as client:
        info = client.publish_model(model, name)
        replicas = len(client.targets)  # a dns:/// target counts each replica behind the name
    out.print(f"published {info.name} version {info.version} ({info.sha256[:12]}) on {replicas} replica(s)")


@app.command("health")
def client_health(
    target: list[str] = TARGETS,
    serving: bool = typer.Option(
        False, help="Exit 1 unless every target is SERVING (a model loaded), not only reachable."
    ),
    timeout: float = typer.Option(5.0, help="Seconds to wait for each target."),
    tls_ca: Path | None = TLS_CA,
) -> None:
    """Health of each replica (grpc.health.v1), for container health checks.

    Exit 0 when every target answers (with --serving: has a model loaded), 1 otherwise."""
    with connect(target, None, tls_ca) as client:
        status = client.health(timeout=timeout)
    for address, state in status.items():
        out.print(f"{address}  {state}", highlight=False)
    ok = all(s == "SERVING" if serving else not s.startswith("UNREACHABLE") for s in status.values())
    if not ok:
        raise typer.Exit(1)


@app.command("models")
def client_models(
    target: list[str] = TARGETS,
    name: str = typer.Option("", help="Only this model's versions."),
    token_file: Path | None = TOKEN_FILE,
    tls_ca: Path | None = TLS_CA,
) -> None:
    """The models each replica stores: versions, precision, the file's SHA-256 and the graph's
    own (the same network keeps it whatever its metadata), which are loaded and on which
    execution providers (a GPU replica that fell back to the CPU would show it here)."""
    from xgal.client.resolve import resolve

    for address in resolve(target):  # each replica behind a dns:/// name, too
        with connect([address], token_file, tls_ca) as client:
            for m in client.list_models(name):
                state = f"loaded on {', '.join(m.providers)}" if m.loaded else "stored, not loaded"
                out.print(
                    f"{address}  {m.name} v{m.version}  {m.precision}  file {m.sha256[:12]}  "
                    f"graph {m.graph_sha256[:12]}  {state}",
                    highlight=False,
                )


@app.command("score")
@acquisition_options()
def client_score(
    pool: str = typer.Option(..., help="Pool path under the scorers' data root."),
    model: str = typer.Option(..., help="Model name."),
    version: int = typer.Option(0, min=0, help="Model version (0 = latest)."),
    target: list[str] = TARGETS,
    top_k: int = TOP_K,
    exclude: Path | None = EXCLUDE,
    output: Path | None = OUTPUT,
    all_scores: bool = ALL_SCORES,
    on_bad_sample: OnBadSample = ON_BAD_SAMPLE,
    token_file: Path | None = TOKEN_FILE,
    tls_ca: Path | None = TLS_CA,
    *,
    acquisition: AcquisitionConfig,
) -> None:
    """Rank a pool on running scorers (sharded over several targets)."""
    from dataclasses import asdict

    from xgal.cli import output as report

    report.check_path(output)
    excluded = read_ids(exclude)
    with connect(target, token_file, tls_ca) as client:
        # The client draws its own progress bar on a terminal.
        res = client.score_pool(
            pool,
            model=model,
            version=version,
            top_k=top_k,
            exclude_ids=excluded,
            return_all=all_scores,
            on_bad_sample=on_bad_sample,
            **asdict(acquisition),
        )
    source = f" with {res.model.name} v{res.model.version}"
    title = f"top {top_k} of {pool} by {acquisition.strategy}"
    report.print_table(res, title, out, source=source, config=acquisition)
    if output is not None:
        context = {
            "model": res.model.name,
            "version": res.model.version,
            "pool": pool,
            "targets": list(target),
            "config": {k: str(v) for k, v in vars(acquisition).items()},
        }
        report.write(res, output, context)
        out.print(f"wrote {output}")
