"""Unit parsing (hand-written files -> base units) and human formatting."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moesim.units import BINARY, DECIMAL, format_si, parse_quantity


@pytest.mark.parametrize(
    "text, kind, expected",
    [
        ("989.4 TFLOP/s", "flops_per_s", 989.4e12),
        ("989.4 TFLOPS", "flops_per_s", 989.4e12),
        ("2.25 PFLOP/s", "flops_per_s", 2.25e15),
        ("166.4 GFLOP/s", "flops_per_s", 166.4e9),
        ("3.35 TB/s", "bytes_per_s", 3.35e12),
        ("450 GB/s", "bytes_per_s", 450e9),
        ("400 Gb/s", "bytes_per_s", 50e9),  # bits: 400e9 / 8
        ("200 Gbps", "bytes_per_s", 25e9),
        ("1 GiB/s", "bytes_per_s", 2**30),
        ("80 GB", "bytes", 80e9),  # GB = 1e9
        ("80 GiB", "bytes", 80 * 2**30),  # GiB = 2^30
        ("512 KiB", "bytes", 512 * 1024),
        ("1.5 TB", "bytes", 1.5e12),
        ("2 us", "s", 2e-6),
        ("2 µs", "s", 2e-6),
        ("1.5 ms", "s", 1.5e-3),
        ("700 ns", "s", 700e-9),
        ("3 s", "s", 3.0),
        ("1 TFLOP", "flops", 1e12),
        ("1e3 GB", "bytes", 1e12),
        ("80GB", "bytes", 80e9),
        (42, "count", 42.0),
        (1e9, "bytes", 1e9),  # a bare number is already in the base unit
        ("7", "bytes_per_s", 7.0),
    ],
)
def test_parse_quantity_converts_to_base_units(text, kind, expected):
    assert math.isclose(parse_quantity(text, kind), expected, rel_tol=1e-12)


def test_bits_and_bytes_differ_by_eight():
    assert parse_quantity("400 GB/s", "bytes_per_s") == 8 * parse_quantity("400 Gb/s", "bytes_per_s")


def test_gib_and_gb_differ():
    assert parse_quantity("80 GiB", "bytes") / parse_quantity("80 GB", "bytes") == pytest.approx(1.073741824)


@pytest.mark.parametrize(
    "text, kind",
    [
        ("80 GQ", "bytes"),
        ("80 Gb", "bytes"),  # capacities are bytes, never bits
        ("80 gb", "bytes"),  # ambiguous lower case
        ("3 TB", "bytes_per_s"),  # a size is not a rate
        ("1 TiFLOP/s", "flops_per_s"),  # FLOP/s prefixes are decimal only
        ("5 min", "s"),
        ("5 GB", "count"),
        ("fast", "bytes"),
    ],
)
def test_unknown_or_wrong_units_are_rejected_naming_the_allowed_ones(text, kind):
    with pytest.raises(ValueError) as exc:
        parse_quantity(text, kind)
    assert "expected" in str(exc.value)


@pytest.mark.parametrize("value", [True, None, [80], float("inf"), "nan GB"])
def test_non_numbers_are_rejected(value):
    with pytest.raises(ValueError):
        parse_quantity(value, "bytes")


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(KeyError):
        parse_quantity("1 GB", "gigabytes")


@given(
    x=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
    prefix=st.sampled_from(sorted(set(DECIMAL) - {"K"} | set(BINARY))),
)
def test_prefixed_bytes_scale_by_their_prefix(x, prefix):
    scale = BINARY.get(prefix) or DECIMAL[prefix]
    assert math.isclose(parse_quantity(f"{x!r} {prefix}B", "bytes"), x * scale, rel_tol=1e-12)


@pytest.mark.parametrize(
    "value, unit, kw, expected",
    [
        (989.4e12, "FLOP/s", {}, "989 TFLOP/s"),
        (50e9, "B/s", {}, "50 GB/s"),
        (80 * 2**30, "B", {"binary": True}, "80 GiB"),
        (3e-6, "s", {}, "3 µs"),
        (1.5e-3, "s", {}, "1.5 ms"),
        (0, "B", {}, "0 B"),
        (512, "B", {}, "512 B"),
    ],
)
def test_format_si_renders_human_units(value, unit, kw, expected):
    assert format_si(value, unit, **kw) == expected
