"""The measurements file: JSON lines appended one at a time, read back tolerantly.

Every record is written as one line followed by a flush and fsync, so a run
killed at any moment leaves complete lines plus at most one partial last line.
:func:`read_measurements` ignores that partial line; :func:`repair_tail`
truncates it before ``--resume`` appends again.

A benchmark measured while the machine ran slow is measured again later in the
run and appended (:func:`moesim.runner.calibrate.run_grid`), so a key can occur
more than once: the reader keeps, at the key's first position, the record whose
sentinel ran fastest (:func:`better`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import TypeAdapter, ValidationError

from ..errors import InputError
from .records import EnvHeader, Measurement, Record

_RECORD = TypeAdapter(Record)


#: a benchmark counts as measured on a slow machine when its sentinel took this much longer than the fastest
#: sentinel of the run: well above the sentinel's own spread on a quiet core (under 3 %), below the 1.3-2x
#: slow periods of a shared virtual machine (a busy SMT sibling or hypervisor steal)
SLOW_MACHINE_FRAC = 0.15


@dataclass(frozen=True)
class MeasurementsFile:
    """What a measurements file holds: one measurement per key (see :func:`better`)."""

    header: EnvHeader | None
    measurements: list[Measurement]
    num_bad_lines: int
    num_superseded: int = 0  # records replaced by a measurement of the same key taken on a faster machine

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


class Sentineled(Protocol):
    """A measurement with the sentinel's time around it (a calibration record or a validation case)."""

    @property
    def sentinel_s(self) -> float | None: ...


S = TypeVar("S", bound=Sentineled)


def better(new: Sentineled, old: Sentineled) -> bool:
    """Whether ``new`` replaces ``old`` (same key): its sentinel ran faster; without sentinels, the later wins."""
    if new.sentinel_s is None or old.sentinel_s is None:
        return old.sentinel_s is None
    return new.sentinel_s < old.sentinel_s


def fastest_sentinel_s(measurements: list[S]) -> float | None:
    """The fastest sentinel among ``measurements``, seconds; None when none has one."""
    xs = [m.sentinel_s for m in measurements if m.sentinel_s is not None]
    return min(xs) if xs else None


def measured_slow(measurements: list[S], fastest_s: float | None = None,
                  frac: float = SLOW_MACHINE_FRAC) -> list[S]:
    """The measurements whose sentinel took more than ``(1 + frac)`` times the fastest (default: of these)."""
    ref = fastest_s if fastest_s is not None else fastest_sentinel_s(measurements)
    if ref is None:
        return []
    return [m for m in measurements if m.sentinel_s is not None and m.sentinel_s > (1 + frac) * ref]


def parse_lines(text: str, source: str) -> MeasurementsFile:
    """Parse JSONL text; a malformed *last* line (an interrupted write) is counted, others are errors."""
    lines = text.split("\n")
    header: EnvHeader | None = None
    out: list[Measurement] = []
    at: dict[str, int] = {}
    bad = superseded = 0
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
        elif rec.key in at:
            superseded += 1
            if better(rec, out[at[rec.key]]):
                out[at[rec.key]] = rec
        else:
            at[rec.key] = len(out)
            out.append(rec)
    return MeasurementsFile(header=header, measurements=out, num_bad_lines=bad, num_superseded=superseded)


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
