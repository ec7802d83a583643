"""All rich rendering, one module per area. Commands compute; these modules draw."""

from __future__ import annotations

import shutil

from rich.console import Console


def console() -> Console:
    """Stdout console; at least 120 columns wide when not a terminal (pipes, files, CI logs)."""
    c = Console(highlight=False, soft_wrap=False)
    if not c.is_terminal:
        c = Console(highlight=False, soft_wrap=False, width=max(120, shutil.get_terminal_size((120, 24)).columns))
    return c
