"""Predictions against published measurements (nccl-tests runs, NCCL maintainers' figures, DeepEP's tables).

The cases, their sources and tolerances live in ``published_comm.py`` (the same
table is printed in docs/communication.md). Each tolerance is the largest
relative error accepted, chosen from what the model leaves out (see ``why``):
a change to the model or a shipped profile that moves a prediction further
than that fails here.
"""

from __future__ import annotations

import pytest
from published_comm import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_prediction_is_within_the_stated_tolerance_of_the_published_figure(case) -> None:  # noqa: ANN001
    predicted = case.predict()
    error = predicted / case.measured - 1
    assert abs(error) <= case.tol, f"{case.what}: predicted {predicted:.1f} vs {case.measured} {case.unit} ({error:+.0%})"


def test_every_case_names_its_source_and_why_it_is_allowed_its_tolerance() -> None:
    for case in CASES:
        assert case.source and case.why and case.tol > 0
    assert len({c.key for c in CASES}) == len(CASES)
