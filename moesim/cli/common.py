"""Helpers shared by the command modules (no rich here: see ``render/``)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import Any

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print only JSON (units in field names).")


class Bounded(click.ParamType):
    """A numeric flag inside a :class:`moesim.limits.Limit` (one place for the bounds of flags and files).

    Integers may be written ``16384``, ``16_384`` or ``1e6``. ``lower=False`` checks
    only finiteness and the upper bound, for flags whose lower bound a later check
    already words (the load and comm models name the field).
    """

    def __init__(self, limit, *, lower: bool = True) -> None:  # noqa: ANN001
        self.limit = limit
        self.lower = lower
        self.name = "integer" if limit.integer else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            msg = self.limit.problem(value, lower=self.lower)
            if msg is None:
                return int(value) if self.limit.integer else float(value)
            self.fail(msg, param, ctx)
        try:
            return self.limit.parse_text(str(value), lower=self.lower)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def writable(path: Any, flag: str) -> None:
    """Refuse an output path that cannot be written before any work runs (``-`` is stdout)."""
    if path is None or str(path) == "-":
        return
    from ..io import check_writable

    check_writable(path, flag)


def to_jsonable(obj: Any) -> Any:
    """Convert pydantic models, dataclasses, numpy values and enums to plain JSON types."""
    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="python"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "as_dict"):
            return to_jsonable(obj.as_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(to_jsonable(k)): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(to_jsonable(obj), indent=2))
