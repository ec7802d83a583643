"""User-facing errors.

Every problem caused by the user's input (a file, a flag, a field) is raised as
:class:`InputError`. The CLI prints it as one line and exits with status 2; the
Python API lets it propagate. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
        parts = [p for p in (self.source, self.field) if p]
        parts.append(self.message)
        return ": ".join(parts)

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


def from_validation_error(exc: "object", source: str | None, raw: object = None) -> InputError:
    """Turn a pydantic ``ValidationError`` into one :class:`InputError` line per problem.

    Only the first problem is kept as the message; the others are appended after
    ``;`` so the output stays on one line.
    """
    errors = exc.errors(include_url=False)  # type: ignore[attr-defined]
    lines = []
    first_field = None
    for err in errors:
        loc = ".".join(str(p) for p in _strip_tags(tuple(err.get("loc", ())), raw))
        msg = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key (check the spelling; see `moesim schema`)"
        elif err.get("type") == "missing":
            msg = "required field is missing"
        msg = msg.removeprefix("Value error, ")
        if first_field is None:
            first_field = loc
            lines.append(msg)
        else:
            lines.append(f"{loc}: {msg}")
    return InputError("; ".join(lines), source=source, field=first_field or None)
