"""Command lines from dataclasses: one `--flag` per field, the one flag parser of the pipelines, the trainers and
the benchmarks (`python -m gpt` and `python -m shards inspect` take a few plain argparse flags).

`build_parser(cls, prog, description, defaults)` gives a field `shard_tokens` the flag `--shard-tokens`,
typed from its annotation (int, float, str; `T | None` as T; bool as `--x` / `--no-x`), with the choices of
`cls.CHOICES` and the help text of `cls.HELP` (dicts by field name) and the default of `defaults` (an
instance, or a function of the field name returning its help's "default: ..." text; without it, the fields'
own defaults). `parse(cls, argv, ...)` returns the instance of the flags. With `suppress_defaults`, the parser
returns only the flags given on the command line, which the trainers lay over a recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence


def flag_type(hint) -> type:
    """The argparse type of a field annotation: bool, int, float or str (`T | None` is T)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [k for k in typing.get_args(hint) if k is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else None
    if hint not in (bool, int, float, str):
        raise TypeError(f"no command-line flag for a field of type {hint!r}")
    return hint


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser(cls, prog: str, description: str, defaults: object | Callable[[str], str | None] | None = None,
                 suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """A parser with one flag per init field of the dataclass `cls`. With `suppress_defaults`, a flag that is
    not given is absent from the result (what `parse` returns); its help still shows the default."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind = flag_type(hints[field.name])
        if callable(defaults):
            shown, default = defaults(field.name), None
        else:  # the field's own default (before any __post_init__), or the instance's value
            default = _field_default(field) if defaults is None else getattr(defaults, field.name)
            shown = None if default is None else f"default: {default}"
        text = "; ".join(t for t in (getattr(cls, "HELP", {}).get(field.name), shown) if t) or None
        default = argparse.SUPPRESS if suppress_defaults else default
        if kind is bool:
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=default,
                                help=text)
        else:
            parser.add_argument(flag_name(field.name), type=kind, default=default, help=text,
                                choices=getattr(cls, "CHOICES", {}).get(field.name))
    return parser


def _field_default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def parse(cls, argv: Sequence[str] | None, prog: str, description: str, defaults=None):
    """An instance of `cls` from `argv`: the class defaults (or the instance `defaults`) with the given flags."""
    args = build_parser(cls, prog, description, defaults).parse_args(argv)
    return cls(**vars(args))
