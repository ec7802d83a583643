"""Print, or write into docs/published-comparisons.md, the table of published end-to-end comparisons.

The comparisons themselves are data (``scenarios/validation-e2e/comparisons.toml``, with the published
numbers in ``published.toml`` beside it) and :mod:`moesim.published` runs them; this script only puts
the table section of the doc in place::

    python tests/step/published_e2e.py           # print the section (as `moesim validate --published --markdown`)
    python tests/step/published_e2e.py --write   # replace the doc's "## Table" section with it
    python tests/step/published_e2e.py --repin   # after an intended model change: set every numeric row's
                                                 # tolerance and "Pinned at" figures in comparisons.toml to
                                                 # today's errors (the rule in that file's header)
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "published-comparisons.md"

if str(REPO) not in sys.path:  # the script may run from anywhere
    sys.path.insert(0, str(REPO))

from moesim.published import default_comparisons_file, fmt_value, markdown, replace_doc_table, run_published  # noqa: E402


def table() -> str:
    """The doc's table section for the bundled comparisons, as the model predicts today."""
    return markdown(run_published())


def write_doc(path: Path = DOC) -> None:
    """Replace the table section of the doc (from ``## Table`` to the next heading) with :func:`table`."""
    from moesim.io import atomic_write_text

    atomic_write_text(path, replace_doc_table(path.read_text(), table()))


def pinned_tolerance(abs_error_frac: float) -> float:
    """The comparisons file's rule: the error rounded up to the next 5 points, plus 5 points of margin."""
    return (math.ceil(round(abs_error_frac * 100, 6) / 5) * 5 + 5) / 100


def pinned_figures(predicted: float, published: float, unit: str) -> str:
    """``116,764 vs 180,000 GPU-h`` (the unit once, after the published value)."""
    pred = fmt_value(predicted, unit)
    if unit and pred.endswith(" " + unit):
        pred = pred[: -len(unit) - 1]
    return f"{pred} vs {fmt_value(published, unit)}"


def repin(path: Path | None = None) -> list[str]:
    """Rewrite each numeric row's ``tolerance`` and ``Pinned at`` text in the comparisons file; returns one line
    per row that changed (old and new error)."""
    from moesim.io import atomic_write_text

    path = Path(path or default_comparisons_file())
    text = path.read_text()
    report = run_published(path)
    changed = []
    for r in report.numeric_rows:
        if r.error_frac is None:
            continue
        start = text.index(f'key = "{r.key}"')
        end = text.find("[[comparison]]", start)
        end = len(text) if end < 0 else end
        block = text[start:end]
        new = re.sub(r"(?m)^tolerance = [0-9.]+$", f"tolerance = {pinned_tolerance(abs(r.error_frac)):.2f}", block,
                     count=1)
        old_pin = re.search(r"Pinned at [+-]?[0-9]+% \(([^)]*)\)", new)
        pin = f"Pinned at {r.error_frac:+.0%} ({pinned_figures(float(r.predicted), float(r.published), r.unit)})"
        if old_pin is None:
            raise SystemExit(f"{path}: row {r.key!r} has no 'Pinned at' note to update")
        if old_pin.group(0) != pin:
            changed.append(f"{r.key}: {old_pin.group(0)} -> {pin}")
        new = new[: old_pin.start()] + pin + new[old_pin.end():]
        text = text[:start] + new + text[end:]
    atomic_write_text(path, text)
    return changed


if __name__ == "__main__":  # pragma: no cover
    if "--repin" in sys.argv[1:]:
        print("\n".join(repin()) or "no row changed")
    elif "--write" in sys.argv[1:]:
        write_doc()
    else:
        print(table())
