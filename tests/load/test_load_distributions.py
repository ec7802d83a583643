"""Routing distributions: probabilities, determinism, parsing and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.errors import InputError
from moesim.load.distributions import (
    Dirichlet,
    Histogram,
    Uniform,
    Zipf,
    expert_probs,
    parse_distribution,
    parse_layer_distributions,
    read_histogram_file,
)


@pytest.mark.parametrize("text", ["uniform", "zipf:1.2", "zipf:0.7:3", "dirichlet:0.3", "dirichlet:2:9", "hist:3,1,1,0,5,1,1,1"])
def test_every_distribution_gives_probabilities_summing_to_one(text: str) -> None:
    p = expert_probs(parse_distribution(text), 8)
    assert p.shape == (8,)
    assert np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_zipf_follows_the_power_law_with_expert_zero_hottest() -> None:
    p = expert_probs(Zipf(exponent=1.5), 5)
    ranks = np.arange(1, 6)
    assert np.allclose(p, ranks**-1.5 / np.sum(ranks**-1.5))
    assert np.all(np.diff(p) < 0)


def test_zipf_exponent_zero_is_uniform() -> None:
    assert np.allclose(expert_probs(Zipf(exponent=0.0), 7), expert_probs(Uniform(), 7))


def test_zipf_seed_permutes_which_expert_is_hot_but_keeps_the_values() -> None:
    a = expert_probs(Zipf(exponent=1.2), 32)
    b = expert_probs(Zipf(exponent=1.2, seed=5), 32)
    assert not np.allclose(a, b)
    assert np.allclose(np.sort(a), np.sort(b))


def test_dirichlet_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    a = expert_probs(Dirichlet(concentration=0.5, seed=1), 64)
    assert np.array_equal(a, expert_probs(Dirichlet(concentration=0.5, seed=1), 64))
    assert not np.allclose(a, expert_probs(Dirichlet(concentration=0.5, seed=2), 64))


def test_small_dirichlet_concentration_is_more_skewed_than_large() -> None:
    def cv(alpha: float) -> float:
        p = expert_probs(Dirichlet(concentration=alpha, seed=0), 256)
        return float(p.std() / p.mean())

    assert cv(0.1) > cv(1.0) > cv(100.0)


def test_histogram_is_normalised_counts() -> None:
    p = expert_probs(Histogram(counts=[6, 2, 2, 0]), 4)
    assert np.allclose(p, [0.6, 0.2, 0.2, 0.0])


def test_histogram_length_must_match_the_experts() -> None:
    with pytest.raises(InputError, match="3 entries but the model has 4 experts"):
        expert_probs(Histogram(counts=[1, 2, 3]), 4)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("hist:1,-1,2", "entry 1 is -1.0"),
        ("hist:1,nan,2", "entry 1 is nan"),
        ("hist:0,0", "sum to 0"),
        ("hist:1,x", "must be a number"),
        ("gauss:1", "unknown distribution 'gauss:1'; allowed: uniform, zipf"),
        ("zipf", "expected zipf:EXPONENT"),
        ("zipf:-1", "greater than or equal to 0"),
        ("dirichlet:0", "greater than 0"),
        ("hist:counts.txt", "must end in .json or .csv"),
    ],
)
def test_bad_distribution_text_is_one_input_error(text: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        parse_distribution(text)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_json_histogram_files_in_each_accepted_shape(tmp_path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([4, 2, 1, 1]))
    (tmp_path / "b.json").write_text(json.dumps({"tokens_per_expert": [4, 2, 1, 1]}))
    for name in ("a.json", "b.json"):
        d = parse_distribution(f"hist:{tmp_path / name}")
        assert d.counts == [4, 2, 1, 1]


def test_csv_histogram_files_in_each_accepted_shape(tmp_path) -> None:
    (tmp_path / "col.csv").write_text("count\n4\n2\n1\n1\n")
    (tmp_path / "row.csv").write_text("4,2,1,1\n")
    (tmp_path / "pairs.csv").write_text("expert,tokens\n1,2\n0,4\n3,1\n2,1\n")
    for name in ("col.csv", "row.csv", "pairs.csv"):
        assert read_histogram_file(tmp_path / name) == [[4, 2, 1, 1]], name


def test_per_layer_file_gives_one_distribution_per_layer_and_at_picks_one(tmp_path) -> None:
    f = tmp_path / "layers.json"
    f.write_text(json.dumps([[1, 1, 1, 1], [5, 1, 1, 1], [1, 1, 1, 9]]))
    layers = parse_layer_distributions(f"hist:{f}")
    assert len(layers.layers) == 3
    assert layers.for_layer(1).counts == [5, 1, 1, 1]
    assert parse_distribution(f"hist:{f}@2").counts == [1, 1, 1, 9]
    with pytest.raises(InputError, match="holds 3 layers"):
        parse_distribution(f"hist:{f}")
    with pytest.raises(InputError, match="layer 7 out of range"):
        parse_distribution(f"hist:{f}@7")


def test_histogram_file_errors_name_the_file(tmp_path) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([1, "two", 3]))
    with pytest.raises(InputError) as info:
        parse_distribution(f"hist:{f}")
    assert info.value.source == str(f)
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputError, match="file not found"):
        parse_distribution(f"hist:{missing}")
