"""What every command group shares: the consoles, progress bars, how errors reach the user, and
the options several commands declare (acquisition, scorer targets, output files).

Nothing heavy is imported here: `xgal score` must never load torch, and `xgal client ...` never
the scorer.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from xgal.core.acquisition import (
    AcquisitionConfig,
    Balance,
    Diversity,
    FlatCam,
    MissingRoi,
    Normalise,
    RoiSource,
    Selection,
    Strategy,
    Uncertainty,
)
from xgal.core.errors import InvalidArgument, UserError

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])

# OS errors about a path the user named (a missing pool, an existing output): the message
# already says which file and what is wrong.
PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def user_errors(fn: F) -> F:
    """A `UserError` or a path error becomes one red line and exit code 2. Anything else is a
    defect and keeps its traceback (exit 1), so that it gets reported rather than read as a
    mistake of the user's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, *PATH_ERRORS) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


class App(typer.Typer):
    """A typer app whose every command reports user errors through `user_errors`, so that no
    command can forget to."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_enable", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:  # type: ignore[override]
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            register(user_errors(fn))
            return fn

        return decorator


class Bar:
    """A transient progress bar on stderr, drawn only on a terminal."""

    def __init__(self, label: str, total: int | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(label, total=total)

    def __enter__(self) -> Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def update(self, done: int, total: int) -> None:
        self.progress.update(self.task, completed=done, total=total)


# -- options several commands declare ----------------------------------------------------------
TARGETS = typer.Option(
    ...,
    "--target",
    help="Scorer host:port, or dns:///name:port for every replica behind a name; repeat for replicas.",
)
TOKEN_FILE = typer.Option(None, help="File holding the bearer token the scorers expect.")
TLS_CA = typer.Option(None, help="PEM root certificate to trust (TLS).")
TOP_K = typer.Option(20, "--top-k", "-k", min=1, help="How many samples to select.")
EXCLUDE = typer.Option(None, help="File of labelled IDs to skip, one per line.")
OUTPUT = typer.Option(None, "--out", "-o", help="Write the ranking as .json (everything) or .csv (rows).")
ALL_SCORES = typer.Option(False, "--all", help="Also write every sample's scores to --out.")


def read_ids(path: Path | None) -> list[str]:
    return path.read_text().split() if path is not None else []


def read_token(path: Path | None) -> str | None:
    return path.read_text().strip() if path is not None else None


def ints(text: str, option: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgument(f"{option} takes comma-separated integers, got {text!r}") from None


def number(value: float, digits: int = 3) -> str:
    """A metric for people: "n/a" where it could not be measured (NaN), not "nan"."""
    return "n/a" if value != value else f"{value:.{digits}f}"


# -- the acquisition options, declared once ----------------------------------------------------
_ACQUISITION_HELP = {
    "strategy": "What ranks the pool: xgal is λ·U + (1 − λ)·M, M = 1 − Dice(Grad-CAM, ROI).",
    "lam": "λ, the weight of uncertainty U in the xgal score, in [0, 1].",
    "uncertainty": "How U is measured (higher = less certain).",
    "entropy_over_log_k": "Divide the entropy by ln K, so U lies in [0, 1].",
    "missing_roi": "Samples without an ROI: max scores M = 1, ignore scores U alone, exclude skips them.",
    "flat_cam": "Samples whose Grad-CAM is flat (no evidence): max scores M = 1, ignore scores U alone.",
    "roi": "M against the expert's ROI, the body found in the image, the ROI the model's head predicts "
    "(learned), or either of those where the expert drew none.",
    "normalise": "Rescale U and M over the whole pool before combining them.",
    "balance": "Split the top-k evenly over predicted classes, or true labels (oracle: simulations).",
    "selection": "top: the k best; softmax or power: k drawn ∝ exp(β·score) or score^β (seeded).",
    "beta": "β of softmax or power selection (higher = closer to top-k).",
    "seed": "Seed of the random strategy and of stochastic selection.",
    "diversity": "Choose the k among the best candidates over the model's embedding: spread (far apart) "
    "or typical (TypiClust cluster representatives, for a first round).",
    "candidates": "How many of the best the diversity step chooses among (0: 5·k spread, 20·k typical).",
}
_ACQUISITION_TYPES: dict[str, type] = {  # in AcquisitionConfig's field order
    "strategy": Strategy,
    "lam": float,
    "uncertainty": Uncertainty,
    "entropy_over_log_k": bool,
    "missing_roi": MissingRoi,
    "normalise": Normalise,
    "balance": Balance,
    "seed": int,
    "selection": Selection,
    "beta": float,
    "flat_cam": FlatCam,
    "roi": RoiSource,
    "diversity": Diversity,
    "candidates": int,
}
_ACQUISITION_FLAGS = {"lam": "--lambda", "entropy_over_log_k": "--entropy-over-log-k/--no-entropy-over-log-k"}
ACQUISITION_FIELDS = tuple(_ACQUISITION_TYPES)


def _acquisition_parameters(overrides: bool, seed_help: str | None) -> list[inspect.Parameter]:
    defaults = AcquisitionConfig()
    params = []
    for name, kind in _ACQUISITION_TYPES.items():
        flag = _ACQUISITION_FLAGS.get(name, "--" + name.replace("_", "-"))
        text = seed_help if name == "seed" and seed_help else _ACQUISITION_HELP[name]
        if overrides:
            default, annotation, text = None, kind | None, text + " (default: the preset's)"
        else:
            default, annotation = getattr(defaults, name), kind
        option = typer.Option(default, flag, help=text, case_sensitive=False)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        )
    return params


def acquisition_options(*, overrides: bool = False, seed_help: str | None = None) -> Callable[[F], F]:
    """Add --strategy, --lambda, --uncertainty, --entropy-over-log-k, --missing-roi,
    --normalise, --balance and --seed to a command. It receives them as its `acquisition`
    argument: an `AcquisitionConfig`, or with `overrides` a dict of only the options the user
    gave (for commands whose defaults come from elsewhere, e.g. a preset)."""

    def decorator(fn: F) -> F:
        sig = inspect.signature(fn)
        if "acquisition" not in sig.parameters:
            raise TypeError(f"{fn.__name__} needs an `acquisition` parameter")
        hints = typing.get_type_hints(fn)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name != "acquisition"
        ]
        added = _acquisition_parameters(overrides, seed_help)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {name: kwargs.pop(name) for name in ACQUISITION_FIELDS}
            if overrides:
                value: Any = {k: v for k, v in given.items() if v is not None}
            else:
                value = AcquisitionConfig(**given)
            return fn(*args, acquisition=value, **kwargs)

        # typer reads the command's options from its signature and type hints.
        wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        )
        wrapper.__annotations__ = {
            **{p.name: p.annotation for p in own},
            **{p.name: p.annotation for p in added},
            "return": hints.get("return"),
        }
        return wrapper  # type: ignore[return-value]

    return decorator
