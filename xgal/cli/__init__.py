"""The `xgal` command line: one module per command group, the shared parts in `common`.
Heavy imports happen inside commands: `xgal score` never loads torch, `xgal client ...` never
the scorer."""

from __future__ import annotations

from xgal.cli import answers, bench, client, demo, label_studio, model, pool, score, serve, train
from xgal.cli.common import App

app = App(help="xgal: explainability-guided active learning for medical imaging.")
app.add_typer(pool.app, name="pool")
app.command("score")(score.score)
app.command("serve")(serve.serve)
app.add_typer(client.app, name="client")
app.command("train")(train.train)
app.add_typer(answers.app, name="annotations")
app.add_typer(label_studio.app, name="label-studio")
app.command("report")(answers.report)
app.add_typer(model.app, name="model")
app.command("bench")(bench.bench)
app.command("demo")(demo.demo)
app.command("regime-map")(demo.regime_map)


def main() -> None:
    app(prog_name="xgal")


__all__ = ["app", "main"]
