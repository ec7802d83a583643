"""Hardware profiles: every shipped one loads, every datasheet number has a source, and the
conventions hold (dense peaks, per-direction bandwidth, bits vs bytes, decimal capacities)."""

from __future__ import annotations

import math
import tomllib

import pytest

from moesim.errors import InputError
from moesim.hardware import SOURCED_SECTIONS, Curve, bundled_hardware, load_hardware

SHIPPED = sorted(bundled_hardware())
REQUIRED = {"a100-sxm-80gb", "h100-sxm", "h200", "h800", "b200", "gb200-nvl72", "mi300x", "local-cpu"}


def test_the_required_profiles_are_shipped():
    assert REQUIRED <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name):
    p = load_hardware(name)
    assert p.name == name
    assert p.accelerator.peak_for("bf16") > 0 and p.accelerator.memory_bytes > 0


def _numbers(obj, path: str):
    """Dotted paths of the numeric leaves of a raw TOML table ({value, source} tables count as leaves)."""
    if isinstance(obj, dict):
        if "value" in obj and set(obj) <= {"value", "source", "note"}:
            yield path
            return
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path
    elif isinstance(obj, str) and any(ch.isdigit() for ch in obj) and not path.endswith(".name"):
        yield path


@pytest.mark.parametrize("name", SHIPPED)
def test_every_datasheet_number_has_a_source(name):
    path = bundled_hardware()[name]
    if path.suffix != ".toml":
        pytest.skip("calibrated profiles carry provenance instead of per-number sources")
    raw = tomllib.loads(path.read_text())
    p = load_hardware(name)
    paths = [q for section in SOURCED_SECTIONS for q in _numbers(raw.get(section, {}), section)]
    assert paths, "no datasheet numbers found"
    for q in paths:
        assert p.sources.get(q, "").strip(), f"{name}: {q} has no source"


# Dense (no 2:4 sparsity) BF16 peaks per GPU, from each vendor datasheet quoted in the profile's
# source string: NVIDIA A100 (312), H100 / H200 SXM (1,979 sparse -> 989.4), B200 (HGX per-GPU
# 4.5 PF sparse -> 2.25), GB200 NVL72 (360 PF sparse per 72 GPUs -> 2.5), AMD MI300X (1307.4).
DENSE_BF16 = {
    "a100-sxm-80gb": 312e12,
    "h100-sxm": 989.4e12,
    "h200": 989.4e12,
    "h800": 989.4e12,
    "b200": 2.25e15,
    "gb200-nvl72": 2.5e15,
    "mi300x": 1307.4e12,
}


@pytest.mark.parametrize("name, peak", sorted(DENSE_BF16.items()))
def test_bf16_peaks_are_dense_not_sparse(name, peak):
    a = load_hardware(name).accelerator
    assert a.peak_flops_per_s["bf16"] == pytest.approx(peak, rel=1e-9)


def test_h100_bf16_peak_is_989_4_not_the_1979_sparse_figure():
    assert load_hardware("h100-sxm").accelerator.peak_for("bf16") == pytest.approx(989.4e12)


# Scale-up bandwidth per GPU, per direction: vendors quote NVLink bidirectionally (H100 "900 GB/s"
# = 450 each way; A100 600 -> 300; B200 / GB200 1.8 TB/s -> 900; H800 400 -> 200 per DeepSeek's
# ISCA'25 paper, arXiv:2505.09343 sec. 4.1; MI300X 7 x 64 GB/s = 448).
SCALE_UP = {
    "a100-sxm-80gb": 300e9,
    "h100-sxm": 450e9,
    "h200": 450e9,
    "h800": 200e9,
    "b200": 900e9,
    "gb200-nvl72": 900e9,
    "mi300x": 448e9,
}


@pytest.mark.parametrize("name, bw", sorted(SCALE_UP.items()))
def test_scale_up_bandwidth_is_per_direction(name, bw):
    assert load_hardware(name).node.scale_up_bandwidth_per_accelerator_bytes_per_s == pytest.approx(bw)


@pytest.mark.parametrize("name, nic", [("h100-sxm", 50e9), ("h200", 50e9), ("b200", 50e9), ("a100-sxm-80gb", 25e9)])
def test_nic_rates_in_gb_per_s_are_converted_from_bits(name, nic):
    # ConnectX-7 NDR 400 Gb/s = 50e9 B/s; ConnectX-6 HDR 200 Gb/s = 25e9 B/s
    assert load_hardware(name).scale_out.bandwidth_per_nic_bytes_per_s == nic


def test_hbm_capacity_is_decimal_gb():
    assert load_hardware("h100-sxm").accelerator.memory_bytes == 80e9  # "80 GB", not 80 GiB
    assert load_hardware("h200").accelerator.memory_bytes == 141e9


def test_gpu_without_fp8_falls_back_to_bf16():
    a = load_hardware("a100-sxm-80gb").accelerator
    assert "fp8" not in a.peak_flops_per_s and a.peak_for("fp8") == a.peak_for("bf16")
    h = load_hardware("h100-sxm").accelerator
    assert h.peak_for("fp8") == pytest.approx(2 * h.peak_for("bf16"), rel=1e-3)


# ----------------------------------------------------------------------------- loader errors


def _variant(tmp_path, old: str, new: str):
    text = bundled_hardware()["h100-sxm"].read_text()
    assert old in text
    p = tmp_path / "variant.toml"
    p.write_text(text.replace(old, new, 1))
    return p


def test_gib_in_a_profile_is_binary(tmp_path):
    p = _variant(tmp_path, 'value = "80 GB"', 'value = "80 GiB"')
    assert load_hardware(p).accelerator.memory_bytes == 80 * 2**30


def test_unknown_unit_names_the_field_and_the_allowed_units(tmp_path):
    p = _variant(tmp_path, 'value = "80 GB"', 'value = "80 GQ"')
    with pytest.raises(InputError) as exc:
        load_hardware(p)
    assert exc.value.field == "accelerator.memory_bytes"
    assert "GQ" in exc.value.message and "GiB" in exc.value.message
    assert exc.value.source == str(p)


def test_datasheet_number_without_source_is_refused(tmp_path):
    p = _variant(tmp_path, 'memory_bandwidth_bytes_per_s = { value = "3.35 TB/s", source = "NVIDIA H100 datasheet, H100 SXM: GPU memory bandwidth 3.35TB/s" }',
                 'memory_bandwidth_bytes_per_s = "3.35 TB/s"')
    with pytest.raises(InputError) as exc:
        load_hardware(p)
    assert exc.value.field == "accelerator.memory_bandwidth_bytes_per_s" and "source" in exc.value.message


def test_empty_source_is_refused(tmp_path):
    p = _variant(tmp_path, 'source = "NVIDIA DGX H100 user guide: 8x NVIDIA H100 GPUs"', 'source = " "')
    with pytest.raises(InputError, match="non-empty source"):
        load_hardware(p)


def test_unknown_key_in_a_profile_is_refused(tmp_path):
    p = _variant(tmp_path, "nvls_sharp = true", "nvls_sharpp = true")
    with pytest.raises(InputError) as exc:
        load_hardware(p)
    assert "nvls_sharpp" in str(exc.value) and "unknown key" in str(exc.value)


def test_negative_bandwidth_is_refused(tmp_path):
    p = _variant(tmp_path, 'value = "3.35 TB/s"', 'value = "-3.35 TB/s"')
    with pytest.raises(InputError) as exc:
        load_hardware(p)
    assert exc.value.field == "accelerator.memory_bandwidth_bytes_per_s"


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(InputError) as exc:
        load_hardware("h1000")
    for name in REQUIRED:
        assert name in exc.value.message


def test_missing_profile_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_hardware(tmp_path / "none.toml")


# ----------------------------------------------------------------------------- efficiency curves


def test_curve_interpolates_linearly_in_log_size_and_holds_the_ends():
    c = Curve(points=[(1e6, 0.2), (1e8, 0.6)])
    assert c(1e7) == pytest.approx(0.4)  # halfway in log10
    assert c(1e3) == 0.2 and c(1e12) == 0.6
    assert list(c([1e6, 1e8])) == [0.2, 0.6]


def test_curve_sizes_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        Curve(points=[(1e8, 0.5), (1e6, 0.6)])


def test_curve_fractions_must_be_in_zero_one():
    with pytest.raises(ValueError):
        Curve(points=[(1e8, 1.5)])


def test_every_shipped_efficiency_curve_stays_a_fraction():
    for name in SHIPPED:
        e = load_hardware(name).efficiency
        for curve in (e.matmul_frac, e.grouped, e.memory_frac):
            for size in (1.0, 1e6, 1e9, 1e15):
                assert 0 < curve(size) <= 1 and math.isfinite(curve(size))


def test_block_scaled_fp8_speed_is_shown_where_a_profile_sets_it(run_cli):
    hopper = run_cli("hardware", "show", "h800")
    assert hopper.exit_code == 0 and "block-scaled FP8 GEMMs at 0.875 of the per-tensor speed" in hopper.stdout
    blackwell = run_cli("hardware", "show", "b200")
    assert blackwell.exit_code == 0 and "block-scaled FP8" not in blackwell.stdout
