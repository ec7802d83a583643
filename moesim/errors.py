"""User-facing errors.

Every problem caused by the user's input (a file, a flag, a field) is raised as
:class:`InputError`. The CLI prints it as one line and exits with status 2; the
Python API lets it propagate. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def clip(text: str, width: int) -> str:
    """``text`` kept to about ``width`` characters (its start and end, with the count left out between)."""
    text = str(text)
    if len(text) <= width:
        return text
    head, tail = width * 2 // 3, width // 4
    return f"{text[:head]}...({len(text) - head - tail:,} characters)...{text[-tail:]}"


class InputError(ValueError):
    """Bad user input, rendered as ``source: field: message``.

    ``source`` is the file (or ``--flag``) the value came from, ``field`` the
    dotted path of the offending key inside it.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [clip(p, 200) for p in (self.source, self.field) if p]
        parts.append(clip(self.message, 1000))
        return " ".join(": ".join(parts).split())

    def with_source(self, source: str) -> "InputError":
        """Return a copy that names ``source`` (kept if already set)."""
        return InputError(self.message, source=self.source or source, field=self.field)


def _strip_tags(loc: tuple, raw: object) -> list:
    """Drop discriminated-union tags from an error location (``workload.serve.x`` -> ``workload.x``)."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part not in node and node.get("kind") == part:
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return out


def _model_classes(ann: object) -> list[type]:
    """The pydantic model classes an annotation admits (through Optional, Union and Annotated)."""
    import typing

    from pydantic import BaseModel

    if isinstance(ann, type):
        return [ann] if issubclass(ann, BaseModel) else []
    out: list[type] = []
    for arg in typing.get_args(ann):
        out += _model_classes(arg)
    return out


def allowed_keys(model: type, path: list[str], raw: object = None) -> list[str] | None:
    """Keys allowed in the table that holds ``path[-1]`` of a ``model`` file (None when unknown).

    Discriminated unions are resolved with the ``kind`` written in ``raw``.
    """
    cls, node = model, raw
    for key in path[:-1]:
        info = getattr(cls, "model_fields", {}).get(key)
        if info is None:
            return None
        node = node.get(key) if isinstance(node, dict) else None
        options = _model_classes(info.annotation)
        if len(options) > 1 and isinstance(node, dict):
            options = [c for c in options if getattr(c.model_fields.get("kind"), "default", None) == node.get("kind")]
        if len(options) != 1:
            return None
        cls = options[0]
    return [k for k in cls.model_fields if k != "base_dir"]


def field_errors(exc: "object", raw: object = None, model: type | None = None) -> list[tuple[str, str]]:
    """(dotted field, message) of each problem in a pydantic ``ValidationError``.

    Union tags are dropped from the field path; an unknown key lists the keys
    allowed in its table when ``model`` (the class that was validated) is given.
    """
    out = []
    for err in exc.errors(include_url=False):  # type: ignore[attr-defined]
        loc = [str(p) for p in _strip_tags(tuple(err.get("loc", ())), raw)]
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "extra_forbidden":
            allowed = allowed_keys(model, loc, raw) if model is not None else None
            msg = "unknown key" + (f"; allowed here: {', '.join(allowed)}" if allowed else
                                   " (check the spelling; see `moesim schema`)")
        elif err.get("type") == "missing":
            msg = "required field is missing"
        out.append((".".join(loc), msg.removeprefix("Value error, ")))
    return out


def from_validation_error(exc: "object", source: str | None, raw: object = None, model: type | None = None) -> InputError:
    """Turn a pydantic ``ValidationError`` into one :class:`InputError` (one line).

    The first problem names the field; the others are appended after ``;``.
    """
    errs = field_errors(exc, raw, model)
    if not errs:
        return InputError("invalid value", source=source)
    (first_field, first_msg), rest = errs[0], errs[1:]
    more = [f"{f}: {m}" for f, m in rest[:3]] + ([f"and {len(rest) - 3} more"] if len(rest) > 3 else [])
    msg = "; ".join([first_msg] + more)
    return InputError(msg, source=source, field=first_field or None)
