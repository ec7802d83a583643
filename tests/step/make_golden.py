"""Record (or check) ``moesim estimate <scenario> --json`` for every bundled scenario.

The recorded outputs in ``tests/data/estimate_golden/`` pin the step model's results byte for byte
(``tests/step/test_golden.py``): a change that is only meant to make the code faster must leave them
as they are. When the model is changed on purpose, regenerate them and review the diff:

    python tests/step/make_golden.py            # rewrite every recorded output (the real command, one process each)
    python tests/step/make_golden.py --check    # exit 1 and name the scenarios whose output differs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "estimate_golden"
#: folders of bundled scenarios, relative to the repository
FOLDERS = ("scenarios", "scenarios/validation-e2e")


def scenario_files() -> list[tuple[str, Path]]:
    """(folder, path) of every bundled scenario file (files without a workload, such as a model TOML kept
    beside the scenarios that use it, are not scenarios)."""
    out = []
    for folder in FOLDERS:
        for p in sorted((REPO / folder).glob("*.toml")):
            with p.open("rb") as f:
                raw = tomllib.load(f)
            if "workload" in raw:
                out.append((folder, p))
    return out


def golden_path(folder: str, path: Path) -> Path:
    return GOLDEN / Path(folder).name / f"{path.stem}.json"


def command_output(path: Path) -> str:
    """stdout of ``moesim estimate PATH --json`` as a fresh process."""
    res = subprocess.run([sys.executable, "-m", "moesim.cli.main", "estimate", str(path), "--json"],
                         check=True, capture_output=True, text=True, cwd=REPO)
    return res.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    bad = []
    for folder, path in scenario_files():
        out = command_output(path)
        gp = golden_path(folder, path)
        if args.check:
            if not gp.exists() or gp.read_text() != out:
                bad.append(str(gp.relative_to(REPO)))
        else:
            gp.parent.mkdir(parents=True, exist_ok=True)
            gp.write_text(out)
            print(f"wrote {gp.relative_to(REPO)}")
    for b in bad:
        print(f"differs: {b}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
