"""Owns `--set FIELD=VALUE` for benchmarks: one field of a frozen config dataclass overridden for a run (a dotted
FIELD reaches into a nested config, e.g. `scheduler.settle_s=0.4`), VALUE converted to the field's type.
Functions keep no state; any thread."""
from __future__ import annotations

import argparse
import dataclasses


def _fields(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def setting_parser(defaults):
    """An argparse `type` turning FIELD=VALUE into (dotted field name, typed value), checked against `defaults`
    (an instance of the config)."""
    def parse(text: str) -> tuple[str, object]:
        name, _, value = text.partition("=")
        *path, leaf = name.split(".")
        config = defaults
        for part in path:
            config = _fields(config).get(part) if dataclasses.is_dataclass(config) else None
        fields = _fields(config) if dataclasses.is_dataclass(config) else {}
        if leaf not in fields or dataclasses.is_dataclass(fields[leaf]) or not value:
            names = ", ".join(k for k, v in fields.items() if not dataclasses.is_dataclass(v)) or "none"
            raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE with FIELD one of {names}")
        kind = type(fields[leaf])
        try:
            return name, (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a {kind.__name__}") from None
    return parse


def with_settings(config, settings: list[tuple[str, object]]):
    """`config` with each (dotted field name, value) of `settings` replaced, in order."""
    for name, value in settings:
        head, _, rest = name.partition(".")
        config = dataclasses.replace(config, **{head: with_settings(getattr(config, head), [(rest, value)])
                                                if rest else value})
    return config
