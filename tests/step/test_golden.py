"""Every bundled scenario's ``moesim estimate --json`` is byte-identical to its recorded output.

The recorded outputs (``tests/data/estimate_golden/``, written by ``tests/step/make_golden.py``) pin
the step model's results: speed work must not move them. A change to the model that is meant to move
them regenerates them (``python tests/step/make_golden.py``) and shows the diff in review.

Each scenario is estimated twice in this one process, after every other scenario has filled the
caches, so a cache that returns another input's result, or a warm path that differs from a cold one,
fails here too.
"""

from __future__ import annotations

import pytest

from make_golden import golden_path, scenario_files

CASES = scenario_files()


def test_every_bundled_scenario_has_a_recorded_output() -> None:
    missing = [str(p) for f, p in CASES if not golden_path(f, p).exists()]
    assert len(CASES) >= 30 and not missing


@pytest.mark.parametrize("folder,path", CASES, ids=[f"{f.split('/')[-1]}/{p.stem}" for f, p in CASES])
def test_estimate_json_matches_the_recorded_output(run_cli, folder, path) -> None:
    want = golden_path(folder, path).read_text()
    for _ in range(2):  # cold for this scenario, then warm
        res = run_cli("estimate", str(path), "--json")
        assert res.exit_code == 0, res.stderr
        assert res.stdout == want


def test_public_api_repeats_give_the_recorded_output(run_cli) -> None:
    """``moesim.estimate(sc)`` on one loaded scenario, called again and again (a planning script), keeps
    giving the recorded figures."""
    import json

    import moesim
    from moesim.cli.common import to_jsonable

    for folder, path in CASES[:6]:
        sc = moesim.load_scenario(path)
        want = golden_path(folder, path).read_text()
        for _ in range(3):
            assert json.dumps(to_jsonable(moesim.estimate(sc)), indent=2) + "\n" == want


def test_results_built_without_validation_validate_to_themselves() -> None:
    """The step model builds its results with ``model_construct`` (no validation in the hot path): each field
    must already have the type validation would give it."""
    import json

    import moesim
    from moesim.cli.common import to_jsonable
    from moesim.step.result import Estimate

    for _, path in CASES:
        est = moesim.estimate(moesim.load_scenario(path))
        again = Estimate.model_validate(est.model_dump())
        assert json.dumps(to_jsonable(again)) == json.dumps(to_jsonable(est))
        assert again.model_dump_json() == est.model_dump_json()
