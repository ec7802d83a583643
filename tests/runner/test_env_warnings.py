"""Warnings about the machine a runner command measures."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from moesim.runner.env import bf16_warning  # noqa: E402


def test_bf16_cases_on_a_cpu_without_bf16_instructions_are_warned_about():
    cpu = {"device_kind": "cpu", "cpu_bf16_instructions": False}
    assert "no bf16 instructions" in bf16_warning(cpu, {"fp32", "bf16"})
    assert bf16_warning(cpu, {"fp32"}) is None
    assert bf16_warning(cpu | {"cpu_bf16_instructions": True}, {"bf16"}) is None
    assert bf16_warning({"device_kind": "gpu"}, {"bf16"}) is None
