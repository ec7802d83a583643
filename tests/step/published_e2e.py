"""Print, or write into docs/published-comparisons.md, the table of published end-to-end comparisons.

The comparisons themselves are data (``scenarios/validation-e2e/comparisons.toml``, with the published
numbers in ``published.toml`` beside it) and :mod:`moesim.published` runs them; this script only puts
the table section of the doc in place::

    python tests/step/published_e2e.py           # print the section (as `moesim validate --published --markdown`)
    python tests/step/published_e2e.py --write   # replace the doc's "## Table" section with it
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "published-comparisons.md"

if str(REPO) not in sys.path:  # the script may run from anywhere
    sys.path.insert(0, str(REPO))

from moesim.published import markdown, replace_doc_table, run_published  # noqa: E402


def table() -> str:
    """The doc's table section for the bundled comparisons, as the model predicts today."""
    return markdown(run_published())


def write_doc(path: Path = DOC) -> None:
    """Replace the table section of the doc (from ``## Table`` to the next heading) with :func:`table`."""
    from moesim.io import atomic_write_text

    atomic_write_text(path, replace_doc_table(path.read_text(), table()))


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv[1:]:
        write_doc()
    else:
        print(table())
