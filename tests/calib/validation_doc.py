"""The results tables of docs/validation.md, from the validation JSON files under scenarios/validation/results/.

``python tests/calib/validation_doc.py`` prints them; ``--write`` replaces, for each machine below, the part
of docs/validation.md between its ``<!-- results NAME -->`` and ``<!-- end results NAME -->`` markers in
place. The numbers are the files' own (``moesim validate --out DIR`` writes ``DIR/validation.json``; copy
it under the names below).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "scenarios" / "validation" / "results"
#: machine (the calibrated profile's name) -> (label, file) of each run reported for it
MACHINES: dict[str, tuple[tuple[str, str], ...]] = {
    "epyc-avx2-1t": (("default, fp32", "epyc-avx2-1t-default-fp32.json"), ("shapes", "epyc-avx2-1t-shapes.json")),
    "epyc-zen4-1t": (("default", "epyc-zen4-1t-default.json"), ("shapes", "epyc-zen4-1t-shapes.json")),
}
DOC = ROOT / "docs" / "validation.md"


def _markers(machine: str) -> tuple[str, str]:
    return f"<!-- results {machine} -->", f"<!-- end results {machine} -->"


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def _summary(errs: list[float]) -> tuple[str, str]:
    a = np.abs(np.asarray(errs))
    return _pct(float(np.median(a))), _pct(float(np.percentile(a, 90)))


def tables(machine: str) -> str:
    """The summary, per-class and per-case tables of one machine's runs."""
    reports = [(label, json.loads((RESULTS / name).read_text())) for label, name in MACHINES[machine]]
    lines = ["| cases | n | median \\|error\\| | p90 \\|error\\| |", "|---|---|---|---|"]
    for label, r in reports:
        errs = [c["error_frac"] for c in r["cases"]]
        lines.append(f"| {label} ({len(errs)} cases, {r['elapsed_s']:.0f} s) | {len(errs)} | "
                     + " | ".join(_summary(errs)) + " |")
        fp32 = [c["error_frac"] for c in r["cases"] if c["layer"]["dtype"] == "fp32"]
        if 0 < len(fp32) < len(errs):
            lines.append(f"| {label}, fp32 only | {len(fp32)} | " + " | ".join(_summary(fp32)) + " |")
    for label, r in reports:
        cls = ", ".join(f"{k} {_pct(v['median_abs_error_frac'])} / {_pct(v['p90_abs_error_frac'])} "
                        f"({int(v['num_cases'])})" for k, v in r["by_class"].items())
        lines += ["", f"Per class, {label} (median / p90, cases): {cls}."]
    for label, r in reports:
        lines += ["", f"{label}:", "",
                  "| case | impl | dtype | T x D x F | E / k | routing | predicted ms | measured ms | error |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in r["cases"]:
            L = c["layer"]
            impl = L["implementation"] + (f" ep{L['ep_size']}" if L.get("ep_size", 1) > 1 else "")
            lines.append(f"| `{c['name']}` | {impl} | {L['dtype']} | {L['num_tokens']} x {L['d_model']} x "
                         f"{L['d_expert_ffn']} | {L['num_experts']} / {L['top_k']} | {L['routing']} | "
                         f"{c['predicted_s'] * 1e3:.1f} | {c['measured_s'] * 1e3:.1f} | {c['error_frac'] * 100:+.1f} % |")
    return "\n".join(lines) + "\n"


def rendered(doc: str) -> str:
    """``doc`` with every machine's tables regenerated between its markers."""
    for machine in MACHINES:
        start, end = _markers(machine)
        head, rest = doc.split(start, 1)
        _, tail = rest.split(end, 1)
        doc = head + start + "\n\n" + tables(machine) + "\n" + end + tail
    return doc


def write_doc(path: Path = DOC) -> None:
    from moesim.io import atomic_write_text

    atomic_write_text(path, rendered(path.read_text()))


if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        write_doc()
    else:
        print("\n".join(tables(m) for m in MACHINES))
