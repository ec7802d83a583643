"""docs/validation.md carries the tables of the result files it names, as tests/calib/validation_doc.py renders them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _module():
    spec = importlib.util.spec_from_file_location("validation_doc", HERE / "validation_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_validation_doc_holds_the_tables_of_its_result_files():
    vd = _module()
    doc = vd.DOC.read_text()
    assert vd.rendered(doc) == doc, "docs/validation.md is out of date: python tests/calib/validation_doc.py --write"


def test_the_rendering_replaces_what_stands_between_the_markers():
    vd = _module()
    machine = next(iter(vd.MACHINES))
    start, end = vd._markers(machine)
    stale = f"before\n{start}\n\n| stale | table |\n\n{end}\nafter\n"
    out = vd.rendered(stale + "".join(f"{a}\n{b}\n" for m in vd.MACHINES if m != machine for a, b in [vd._markers(m)]))
    assert "| stale | table |" not in out
    assert vd.tables(machine) in out
    assert out.startswith("before\n") and "\nafter\n" in out
