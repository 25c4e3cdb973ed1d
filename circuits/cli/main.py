"""`circuits` entry point: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import os
import sys

import click
import typer
from typer.core import TyperGroup

from circuits.cli import models as models_cli


class _UserErrorsAsOneLine(TyperGroup):
    """THE error boundary: every command's user errors (bad input, bad numbers, missing or corrupt
    files, not enough memory for what was asked) end as one line `error: ...` and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - anything not a user error is re-raised below
            line = user_error_line(exc)
            if line is None:
                raise
            click.echo(f"error: {line}", err=True)
            ctx.exit(2)


def user_error_line(exc: BaseException) -> str | None:
    """The one line to show for a user error, or None if `exc` is a bug (keep its traceback)."""
    from pydantic import ValidationError

    from circuits.errors import CircuitsError
    from graphs.errors import GraphError
    from safeio.errors import OutputError
    from transcoders.errors import TranscoderError

    if isinstance(exc, (CircuitsError, TranscoderError, GraphError, OutputError)):
        return str(exc)
    if isinstance(exc, click.ClickException):  # a bad option value, raised while parsing a subcommand
        return exc.format_message()
    if isinstance(exc, ValidationError):  # a config object built outside circuits.cli.options
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ()))
        return f"{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return ("not enough memory for the sizes asked for (" + str(exc).splitlines()[0][:120] +
                "); use smaller counts or batch sizes")
    return None


app = typer.Typer(
    cls=_UserErrorsAsOneLine,
    help="Circuit tracing for transformer language models: build models, train transcoders, "
    "trace attribution graphs, prune and export them, and intervene on features.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.add_typer(models_cli.app, name="models")

# Each module registers its commands; a new command group is one more name here.
for _module in ("transcoders", "fidelity", "trace", "prune", "intervene", "features", "demo", "view"):
    __import__(f"circuits.cli.{_module}", fromlist=["register"]).register(app)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
