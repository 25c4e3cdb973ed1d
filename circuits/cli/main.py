"""`circuits` entry point: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import os
import sys

import click
import typer
from typer.core import TyperGroup

from circuits.cli import models as models_cli
from circuits.cli.common import HELP, one_line


def _with_typer_copy(real: type[BaseException], typer_module: str, name: str) -> tuple[type[BaseException], ...]:
    """`real` (a click class) and typer's own copy of it, where typer vendors click (typer >= 0.20)."""
    import importlib

    try:
        copy = getattr(importlib.import_module(typer_module), name)
    except (ImportError, AttributeError):
        return (real,)
    return (real,) if copy is real else (real, copy)


_CLICK_ERRORS = _with_typer_copy(click.ClickException, "typer._click.exceptions", "ClickException")
_CLICK_ABORTS = _with_typer_copy(click.exceptions.Abort, "typer.exceptions", "Abort")
_CLICK_EXITS = _with_typer_copy(click.exceptions.Exit, "typer._click.exceptions", "Exit")


def _is_help_request(exc: BaseException) -> bool:
    """click's "no arguments: show the help" signal, which is an exception but not an error."""
    return type(exc).__name__ == "NoArgsIsHelpError"


class _UserErrorsAsOneLine(TyperGroup):
    """THE error boundary: every command's user errors (bad input, bad numbers, missing or corrupt
    files, not enough memory for what was asked) end as one line `error: ...` and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (*_CLICK_EXITS, *_CLICK_ABORTS):  # --help and ctx.exit (click's and typer's copies): not errors
            raise
        except Exception as exc:  # noqa: BLE001 - anything not a user error is re-raised below
            line = user_error_line(exc)
            if line is None:
                raise
            click.echo(f"error: {one_line(line)}", err=True)
            ctx.exit(2)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Errors click meets before any command runs (an unknown command, a bad root option) end
        in one line too; everything else behaves as click's standalone mode."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERRORS as exc:
            if _is_help_request(exc):
                exc.show()
                sys.exit(exc.exit_code)
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(2)
        except _CLICK_ABORTS:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def user_error_line(exc: BaseException) -> str | None:
    """The one line to show for a user error, or None if `exc` is a bug (keep its traceback)."""
    from pydantic import ValidationError

    from circuits.errors import CircuitsError
    from graphs.errors import GraphError
    from safeio.errors import OutputError
    from transcoders.errors import TranscoderError

    if isinstance(exc, (CircuitsError, TranscoderError, GraphError, OutputError)):
        return str(exc)
    if isinstance(exc, _CLICK_ERRORS) and _is_help_request(exc):
        return None  # a group called without a command: click shows its help
    if isinstance(exc, _CLICK_ERRORS):  # a bad option value, raised while parsing a subcommand
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
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, **HELP)
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
