"""Number formatting for humans (the only place with human units)."""

from __future__ import annotations

from ...units import format_si


def params(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return f"{n:.0f}"


def nbytes(b: float) -> str:
    """Decimal bytes (GB = 1e9) as the datasheets use."""
    return format_si(b, "B")


def gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def seconds(s: float) -> str:
    return format_si(s, "s")


def rate(x: float, unit: str) -> str:
    return format_si(x, unit)


def bar(frac: float, width: int = 30) -> str:
    frac = max(0.0, min(frac, 1.0))
    full = int(round(frac * width))
    return "█" * full + "·" * (width - full)
