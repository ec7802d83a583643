"""All rich rendering, one module per area. Commands compute; these modules draw."""

from __future__ import annotations

from rich.console import Console


def console() -> Console:
    return Console(highlight=False, soft_wrap=False)
