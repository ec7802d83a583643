"""Numeric formats: storage bytes per element and the peak-FLOP/s key they use.

Block-scaled formats store a shared scale per block, so their bytes per element
are fractional and never rounded: MXFP4 (OCP Microscaling spec v1.0, 2023) keeps
32 FP4 (E2M1) elements with one 8-bit E8M0 scale, 4 + 8/32 = 4.25 bits.
``int4_g128`` is a GPTQ/AWQ-style 4-bit format with one fp16 scale and one fp16
zero point per 128 weights (4 + 32/128 = 4.25 bits); plain ``int4`` counts the
4 bits alone.
"""

from __future__ import annotations

from typing import Literal

DType = Literal["fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "int4_g128", "mxfp4", "fp4"]

BITS_PER_ELEMENT: dict[str, float] = {
    "fp32": 32.0,
    "tf32": 32.0,
    "bf16": 16.0,
    "fp16": 16.0,
    "fp8": 8.0,
    "int8": 8.0,
    "int4": 4.0,
    "int4_g128": 4.0 + 32.0 / 128.0,
    "mxfp4": 4.0 + 8.0 / 32.0,
    "fp4": 4.0,
}

#: dtypes listed in model cards' weight-memory table
WEIGHT_DTYPES: tuple[str, ...] = ("bf16", "fp8", "int4", "mxfp4")


def bytes_per_element(dtype: str) -> float:
    """Storage bytes per element of ``dtype`` (fractional for block-scaled formats)."""
    try:
        return BITS_PER_ELEMENT[dtype] / 8.0
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {', '.join(BITS_PER_ELEMENT)}") from None


def compute_dtype(dtype: str) -> str:
    """The tensor-core format a weight dtype computes in (the key of ``peak_flops_per_s``).

    Weight-only 4-bit formats are dequantised and computed in bf16; MXFP4 and FP4
    compute natively only where the profile lists an ``fp4`` peak, which the
    caller checks.
    """
    return {"int4": "bf16", "int4_g128": "bf16", "int8": "int8", "mxfp4": "fp4"}.get(dtype, dtype)
