"""`circuits` entry point: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import os
import sys

import click
import typer
from typer.core import TyperGroup

from circuits.cli import models as models_cli


class _UserErrorsAsOneLine(TyperGroup):
    """Every command's user errors (bad input, missing files) end as one line and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except _user_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


app = typer.Typer(
    cls=_UserErrorsAsOneLine,
    help="Circuit tracing for transformer language models: build models, train transcoders, "
    "trace attribution graphs, prune and export them, and intervene on features.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(models_cli.app, name="models")

for _module in ("transcoders", "fidelity", "trace", "prune", "intervene", "features", "demo", "view"):
    try:
        _mod = __import__(f"circuits.cli.{_module}", fromlist=["register"])
    except ModuleNotFoundError as exc:  # command group not written yet
        if exc.name != f"circuits.cli.{_module}":
            raise
        continue
    _mod.register(app)


def _user_errors() -> tuple[type[BaseException], ...]:
    from circuits.errors import CircuitsError
    from graphs.errors import GraphError
    from safeio.errors import OutputError
    from transcoders.errors import TranscoderError

    return (CircuitsError, TranscoderError, GraphError, OutputError)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except _user_errors() as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
