"""The measurements file: JSON lines appended one at a time, read back tolerantly.

Every record is written as one line followed by a flush and fsync, so a run
killed at any moment leaves complete lines plus at most one partial last line.
:func:`read_measurements` ignores that partial line; :func:`repair_tail`
truncates it before ``--resume`` appends again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from ..errors import InputError
from .records import EnvHeader, Measurement, Record

_RECORD = TypeAdapter(Record)


@dataclass(frozen=True)
class MeasurementsFile:
    """What a measurements file holds."""

    header: EnvHeader | None
    measurements: list[Measurement]
    num_bad_lines: int

    @property
    def keys(self) -> set[str]:
        return {m.key for m in self.measurements}


def append_record(path: Path, record: Measurement | EnvHeader) -> None:
    """Append one record as a line; flushed and fsynced before returning."""
    line = record.model_dump_json() + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def parse_lines(text: str, source: str) -> MeasurementsFile:
    """Parse JSONL text; a malformed *last* line (an interrupted write) is counted, others are errors."""
    lines = text.split("\n")
    header: EnvHeader | None = None
    out: list[Measurement] = []
    bad = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        is_last = all(not rest.strip() for rest in lines[i + 1:])
        try:
            rec = _RECORD.validate_python(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            if is_last:
                bad += 1
                continue
            raise InputError(f"line {i + 1} is not a measurement record ({str(exc).splitlines()[0]})", source=source) from None
        if isinstance(rec, EnvHeader):
            header = header or rec
        else:
            out.append(rec)
    return MeasurementsFile(header=header, measurements=out, num_bad_lines=bad)


def read_measurements(path: Path) -> MeasurementsFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("measurements file not found", source=str(path)) from None
    return parse_lines(text, str(path))


def repair_tail(path: Path) -> int:
    """Truncate a partial last line (no trailing newline); returns the bytes removed."""
    p = Path(path)
    if not p.exists():
        return 0
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    cut = data.rfind(b"\n") + 1
    with open(p, "r+b") as f:
        f.truncate(cut)
    return len(data) - cut


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
