"""CLI options, derived in one place: numbers with their allowed range (finite, bounded), and a
command's options from a pydantic config object (TraceConfig, TrainConfig), whose field
descriptions are the help and whose constraints are the ranges.

Every bad number stops before any work with one line naming the option and its range, e.g.
`error: Invalid value for '--node-threshold': 7.0 is not in the range 0<x<=1.`
"""

from __future__ import annotations

import inspect
import math
import typing
from typing import Any, Callable, Literal

import click
import typer
from pydantic import BaseModel, ValidationError

from circuits.errors import CircuitsError


class Number:
    """Parser of an int or a float that must be finite and within [min, max] (open ends where
    asked); a bad value is a click.BadParameter naming `flag` and the range."""

    def __init__(self, kind: type = float, min: float | None = None, max: float | None = None,
                 min_open: bool = False, max_open: bool = False, flag: str = ""):
        self.kind, self.min, self.max, self.min_open, self.max_open = kind, min, max, min_open, max_open
        self.name = "integer" if kind is int else "number"
        self.flag = flag

    def fail(self, message: str, param=None, ctx=None):
        raise click.BadParameter(message, ctx=ctx, param=param, param_hint=f"'{self.flag}'" if self.flag else None)

    def __call__(self, value: Any):
        if value is None or (isinstance(value, self.kind) and not isinstance(value, bool)
                             and math.isfinite(value) and value == self.convert(value, None, None)):
            return value
        return self.convert(value, None, None)

    def describe(self) -> str:
        lo = "" if self.min is None else f"{self.min}{'<' if self.min_open else '<='}"
        hi = "" if self.max is None else f"{'<' if self.max_open else '<='}{self.max}"
        return f"{lo}x{hi}" if lo or hi else "any finite number"

    def convert(self, value: Any, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number = float(value) if self.kind is float else _to_int(value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number (allowed: {self.describe()})", param, ctx)
        too_low = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        too_high = self.max is not None and (number >= self.max if self.max_open else number > self.max)
        if too_low or too_high:
            self.fail(f"{number} is not in the range {self.describe()}", param, ctx)
        return number

    @property
    def metavar(self) -> str:
        return "INTEGER" if self.kind is int else "FLOAT"


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text)


def number_option(default, *decls: str, kind: type = int, min: float | None = None, max: float | None = None,
                  min_open: bool = False, max_open: bool = False, help: str = "") -> Any:
    """A typer option holding one number in a range (the range is appended to the help)."""
    number = Number(kind, min, max, min_open, max_open, flag=sorted(decls, key=len)[-1] if decls else "")
    return typer.Option(default, *decls, parser=number, metavar=number.metavar,
                        help=f"{help} [{number.describe()}]".strip())


# --- options from a config object ----------------------------------------------------------------
# A config may nest another (TrainConfig.transcoder is a TranscoderArchitecture): the CLI shows the
# nested fields as options of their own, one level, so every option is a leaf field by its name.
def _nested_config(field) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def option_fields(config: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every option of `config` (its fields and its nested configs' fields) -> the config that owns it."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in config.model_fields.items():
        inner = _nested_config(field)
        for leaf, owner in (option_fields(inner).items() if inner else [(name, config)]):
            if leaf in out:
                raise TypeError(f"{config.__name__}: option '{leaf}' is defined twice")
            out[leaf] = owner
    return out


def nest(config: type[BaseModel], values: dict) -> dict:
    """Option values by leaf name -> the dict `config` validates (nested configs' fields grouped)."""
    out = dict(values)
    for name, field in config.model_fields.items():
        inner = _nested_config(field)
        if inner is not None:
            group = {k: out.pop(k) for k in list(out) if k in option_fields(inner)}
            if group:
                out[name] = nest(inner, group)
    return out


def flag(config: type[BaseModel], name: str) -> str:
    """The CLI flag of a config option: `--field-name`, or the field's json_schema_extra['flag']."""
    extra = option_fields(config)[name].model_fields[name].json_schema_extra or {}
    return extra.get("flag") or "--" + name.replace("_", "-")


def _bounds(field) -> dict:
    out: dict = {}
    for c in field.metadata:
        for attr, key, is_open in (("gt", "min", True), ("ge", "min", False), ("lt", "max", True), ("le", "max", False)):
            if getattr(c, attr, None) is not None:
                out[key] = getattr(c, attr)
                out[f"{key}_open"] = is_open
    return out


def _field_option(config: type[BaseModel], name: str):
    """(annotation, typer.Option) of one config option; unset (None) means "the config's default"."""
    field = option_fields(config)[name].model_fields[name]
    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not Literal and args and typing.get_origin(annotation) is not list:
        annotation = args[0]  # X | None -> X
    default = field.get_default(call_default_factory=True)
    help_text = f"{field.description} (default: {default})"
    decls = [flag(config, name)]
    if typing.get_origin(annotation) is Literal:
        choices = [str(c) for c in typing.get_args(annotation)]
        return str, typer.Option(None, *decls, parser=_choice(decls[0], choices), metavar="[" + "|".join(choices) + "]",
                                 help=help_text, show_default=False)
    if annotation is bool:
        return bool, typer.Option(None, f"{decls[0]}/--no-{decls[0][2:]}", help=help_text, show_default=False)
    if annotation in (int, float):
        number = Number(annotation, **_bounds(field), flag=decls[0])
        return annotation, typer.Option(None, *decls, parser=number, metavar=number.metavar, show_default=False,
                                        help=f"{help_text} [{number.describe()}]")
    if typing.get_origin(annotation) is list:
        return list[str], typer.Option(None, *decls, help=f"{field.description} (repeatable)", show_default=False)
    return str, typer.Option(None, *decls, help=help_text, show_default=False)


def _choice(flag_name: str, choices: list[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value is not None and str(value) not in choices:
            raise click.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=f"'{flag_name}'")
        return value
    return parse


def config_parameters(config: type[BaseModel], exclude: typing.Iterable[str] = (),
                      only: typing.Iterable[str] | None = None) -> list[inspect.Parameter]:
    """Keyword parameters (for a command's signature) for every option of `config` (or those in
    `only`) but `exclude`."""
    params = []
    for name in option_fields(config):
        if name in exclude or (only is not None and name not in only):
            continue
        annotation, option = _field_option(config, name)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=typing.Optional[annotation]))
    return params


def with_config_options(config: type[BaseModel], exclude: typing.Iterable[str] = (),
                        only: typing.Iterable[str] | None = None) -> Callable:
    """Decorator: the command also takes every field of `config` (or those in `only`) as an option,
    after its own; the command gets them as **options and builds the config with `config_from`."""
    def wrap(fn: Callable) -> Callable:
        own = list(inspect.signature(fn).parameters.values())
        own = [p for p in own if p.kind != inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature(own + config_parameters(config, exclude, only))
        return fn
    return wrap


def given(config: type[BaseModel], options: dict) -> dict:
    """The config options the user set, by name (unset options are None, repeatable ones empty)."""
    fields = option_fields(config)
    return {k: v for k, v in options.items() if k in fields and v not in (None, [], ())}


def describe_validation_error(config: type[BaseModel], exc: ValidationError) -> str:
    """One line from a pydantic ValidationError, naming each field by its CLI flag."""
    parts, fields = [], option_fields(config)
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        named = [x for x in loc if x in fields]
        nested_only = loc and all(x in config.model_fields or x in fields for x in loc)
        shown = flag(config, named[-1]) if named else "" if nested_only else ".".join(loc)
        msg = err.get("msg", "invalid").replace("Value error, ", "")
        parts.append(f"{shown} {msg} (got {err.get('input')!r})" if shown else msg)
    return "; ".join(parts)


def build_config(config: type[BaseModel], values: dict):
    """`config` from option values by name (see `nest`), with a validation error as one
    CircuitsError line naming the flags."""
    try:
        return config.model_validate(nest(config, values))
    except ValidationError as exc:
        raise CircuitsError(describe_validation_error(config, exc)) from None


def config_from(config: type[BaseModel], options: dict):
    """The config object from a command's **options (unset options take the config's defaults)."""
    return build_config(config, given(config, options))
