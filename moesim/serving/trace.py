"""Request traces: CSV or JSON lines with one request per row.

Format (docs/serving.md):

* CSV (``.csv``): a header row naming at least ``arrival_s``, ``prompt_tokens`` and
  ``output_tokens`` (any order; other columns, such as a request id, are ignored),
  then one request per row;
* JSON lines (``.jsonl`` / ``.json``): one object per line with those keys
  (blank lines skipped).

``arrival_s`` is seconds from any origin (>= 0, finite); the stream starts at the
first arrival. Token counts are whole numbers >= 1. Rows need not be sorted (they
are, stably). A problem names the file, the line and the column.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import parse_json, read_text
from .stream import MAX_REQUESTS, MAX_TOKENS, RequestStream

COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


def _number(text, where: str, line: int, col: str, *, whole: bool) -> float:
    if isinstance(text, bool):
        raise InputError(f"expected a number, got {text!r}", source=where, field=f"line {line}: {col}")
    if isinstance(text, (int, float)):
        v = float(text)
    else:
        s = str(text).strip()
        try:
            v = float(s)
        except ValueError:
            raise InputError(f"expected a number, got {s[:40]!r}", source=where, field=f"line {line}: {col}") from None
    if not math.isfinite(v):
        raise InputError(f"expected a finite number, got {v!r}", source=where, field=f"line {line}: {col}")
    if whole:
        if not v.is_integer() or not 1 <= v <= MAX_TOKENS:
            raise InputError(f"expected a whole number of tokens from 1 to {MAX_TOKENS:,}, got {text!r}",
                             source=where, field=f"line {line}: {col}")
    elif v < 0:
        raise InputError(f"expected seconds >= 0, got {text!r}", source=where, field=f"line {line}: {col}")
    return v


def _rows_csv(text: str, where: str):
    reader = csv.reader(io.StringIO(text))
    header = None
    for row in reader:
        line = reader.line_num
        if header is None:
            if not row or all(not c.strip() for c in row):
                continue
            header = [c.strip() for c in row]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise InputError(f"header lacks column(s) {', '.join(missing)}; a trace needs {', '.join(COLUMNS)}",
                                 source=where, field=f"line {line}")
            idx = [header.index(c) for c in COLUMNS]
            continue
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise InputError(f"row has {len(row)} column(s), the header {len(header)}", source=where,
                             field=f"line {line}")
        yield line, [row[i] for i in idx]
    if header is None:
        raise InputError(f"empty trace: no header row (a trace needs {', '.join(COLUMNS)})", source=where)


def _rows_jsonl(text: str, where: str):
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        obj = parse_json(raw, f"{where}: line {line}")
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object per line", source=where, field=f"line {line}")
        missing = [c for c in COLUMNS if c not in obj]
        if missing:
            raise InputError(f"object lacks key(s) {', '.join(missing)}", source=where, field=f"line {line}")
        yield line, [obj[c] for c in COLUMNS]


def read_trace(path: str | Path) -> RequestStream:
    """The requests of a trace file (see the module docstring)."""
    where = str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise InputError(f"a trace is a .csv or .jsonl file; got {Path(path).name!r}", source=where)
    text = read_text(path)
    rows = _rows_csv(text, where) if suffix == ".csv" else _rows_jsonl(text, where)
    t, p, o, lines = [], [], [], []
    for line, (a, pt, ot) in rows:
        lines.append(line)
        if len(t) >= MAX_REQUESTS:
            raise InputError(f"more than {MAX_REQUESTS:,} requests", source=where, field=f"line {line}")
        t.append(_number(a, where, line, "arrival_s", whole=False))
        p.append(int(_number(pt, where, line, "prompt_tokens", whole=True)))
        o.append(int(_number(ot, where, line, "output_tokens", whole=True)))
    if not t:
        raise InputError("empty trace: no requests", source=where)
    order = np.argsort(np.asarray(t), kind="stable")
    arr = np.asarray(t)[order]
    return RequestStream(arr - arr[0], np.asarray(p, dtype=np.int64)[order], np.asarray(o, dtype=np.int64)[order],
                         f"trace {Path(path).name}", None, np.asarray(lines, dtype=np.int64)[order], where)

