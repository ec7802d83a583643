"""Human units in hand-written files, base units everywhere else.

Hand-written TOML may say ``"989 TFLOP/s"``, ``"3.35 TB/s"``, ``"80 GB"``,
``"400 Gb/s"`` or ``"2 us"``; :func:`parse_quantity` converts such a string once,
at load time, to the base unit of its kind (FLOP/s, bytes/s, bytes, seconds).

Conventions (strict): k/M/G/T/P are powers of 1000; Ki/Mi/Gi/Ti are powers of
1024; ``B`` is a byte and ``b`` a bit, so ``400 Gb/s`` is 50e9 bytes/s.
A bare number is taken as already in the base unit.
"""

from __future__ import annotations

import math
import re

DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_RE = re.compile(rf"^\s*{_NUM}\s*([^\s].*?)?\s*$")

KINDS = {
    "flops_per_s": "FLOP/s with an SI prefix, e.g. '989 TFLOP/s' (also 'TFLOPS')",
    "bytes_per_s": "bytes or bits per second, e.g. '3.35 TB/s', '900 GB/s', '400 Gb/s'",
    "bytes": "bytes, e.g. '80 GB' (1e9) or '80 GiB' (2^30)",
    "s": "seconds, e.g. '2 us', '1.5 ms', '3 s'",
    "flops": "FLOP count, e.g. '1 TFLOP'",
    "count": "a plain number",
}

_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}


def _prefixed(unit: str, base_names: tuple[str, ...]) -> float | None:
    for base in base_names:
        if unit.endswith(base):
            prefix = unit[: -len(base)]
            if prefix in BINARY:
                return float(BINARY[prefix])
            if prefix in DECIMAL:
                return DECIMAL[prefix]
    return None


def parse_quantity(value: object, kind: str) -> float:
    """Convert ``value`` (a number or a string with a unit) to the base unit of ``kind``.

    Raises ``ValueError`` naming the allowed units when the unit is unknown, so
    pydantic validators can report it against the field.
    """
    if kind not in KINDS:
        raise KeyError(kind)
    if isinstance(value, bool):
        raise ValueError(f"expected {KINDS[kind]}, got a boolean")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        m = _RE.match(value)
        if not m:
            raise ValueError(f"cannot read {value!r}: expected {KINDS[kind]}")
        number = float(m.group(1))
        unit = (m.group(2) or "").strip()
        scale = _unit_scale(unit, kind)
        if scale is None:
            raise ValueError(f"unknown unit {unit!r} in {value!r}: expected {KINDS[kind]}")
        out = number * scale
    else:
        raise ValueError(f"expected {KINDS[kind]}, got {type(value).__name__}")
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _unit_scale(unit: str, kind: str) -> float | None:
    if unit == "":
        return 1.0
    if kind == "flops_per_s":
        for base in ("FLOP/s", "FLOPS", "FLOPs/s"):
            s = _prefixed(unit, (base,))
            if s is not None and unit[: -len(base)] in DECIMAL:
                return s
        return None
    if kind == "flops":
        for base in ("FLOP", "FLOPs"):
            if unit.endswith(base) and unit[: -len(base)] in DECIMAL:
                return DECIMAL[unit[: -len(base)]]
        return None
    if kind == "bytes_per_s":
        if unit.endswith("B/s"):
            return _prefixed(unit, ("B/s",))
        if unit.endswith("bps") or unit.endswith("b/s"):
            base = "bps" if unit.endswith("bps") else "b/s"
            s = _prefixed(unit, (base,))
            return None if s is None else s / 8.0
        return None
    if kind == "bytes":
        if unit.endswith("B"):
            return _prefixed(unit, ("B",))
        return None
    if kind == "s":
        return _TIME.get(unit)
    return None


def format_si(value: float, unit: str, *, binary: bool = False, digits: int = 3) -> str:
    """Render ``value`` (base unit) with an SI (or binary) prefix for humans."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    prefixes = (
        [("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)]
        if binary
        else [("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)]
    )
    mag = abs(value)
    for p, s in prefixes:
        if mag >= s:
            return f"{value / s:.{digits}g} {p}{unit}"
    if unit == "s" and mag < 1:
        for p, s in (("m", 1e-3), ("µ", 1e-6), ("n", 1e-9)):
            if mag >= s:
                return f"{value / s:.{digits}g} {p}s"
    return f"{value:.{digits}g} {unit}"
