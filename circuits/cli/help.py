"""How `--help` names things: click's words (PROMPT, TEXT, PATH, INTEGER), not typer's Python ones.

typer (0.2x, plain help) shows a required argument as `{prompt}` in the usage line and an option's
type as its Python annotation (`<str>`, `<path>`, `<list[str]>`). `name_metavars` gives every
argument and every option that takes a value, in a command tree, a metavar where it has none:
PROMPT for an argument `prompt`, and TEXT / PATH / INTEGER / FLOAT by the option's type.
"""

from __future__ import annotations

HELP_OPTION_NAMES = ["-h", "--help"]
_WORDS = {int: "INTEGER", float: "FLOAT"}


def _type_word(param) -> str:
    """TEXT, PATH, INTEGER or FLOAT for a typer parameter (by its annotation; a list: its items)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return "TEXT"
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    if desc.is_list:
        annotation = next(iter(getattr(annotation, "__args__", ())), str)
    return _WORDS.get(annotation, "PATH" if getattr(annotation, "__name__", "") == "Path" else "TEXT")


def name_metavars(command) -> None:
    """Give every parameter of `command` and its subcommands a click-style metavar (in place)."""
    for param in getattr(command, "params", []):
        if param.metavar is not None or getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        if param.param_type_name == "argument":
            param.metavar = (param.name or "ARG").upper()
            _plain_argument(param)
        else:
            param.metavar = _type_word(param)
    for sub in getattr(command, "commands", {}).values():
        name_metavars(sub)


def _plain_argument(arg) -> None:
    """The usage line shows PROMPT (required), [PROMPT] (optional), PROMPTS... (many), as click
    does; the Arguments list shows the name alone (typer adds `{}` and the Python type)."""
    def usage(ctx, arg=arg) -> list[str]:
        name = arg.metavar + ("..." if arg.nargs != 1 else "")
        return [name if arg.required else f"[{name}]"]

    arg.get_usage_pieces = usage
    arg.display_type_rich = lambda ctx: None


def version_line() -> str:
    """`circuits --version`: the installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"circuits {version('circuits')}"
    except PackageNotFoundError:
        return "circuits (not installed: run from a source tree)"
