"""The key figures of an estimate as one flat record (the rows of plan, sweep and compare)."""

from __future__ import annotations

from typing import Any

from ..step.result import Estimate

#: record fields, in display order, with units in their names
RECORD_FIELDS = (
    "hardware", "num_gpus", "tp", "pp", "dp", "ep", "etp", "zero_stage", "batch_size",
    "fits", "memory_per_gpu_bytes", "step_s", "ttft_s", "tpot_s", "tokens_per_s", "tokens_per_s_per_gpu",
    "mfu_frac", "usd_per_hour", "usd_per_million_tokens", "gpu_hours_per_million_tokens",
)


def record(est: Estimate, batch_size: int | None = None) -> dict[str, Any]:
    """Flat record of the figures people compare across candidates."""
    lay = est.layout
    price = est.cost.usd_per_gpu_hour
    return {
        "hardware": est.hardware,
        "num_gpus": est.num_gpus,
        "tp": lay["tp"], "pp": lay["pp"], "dp": lay["dp"], "ep": lay["ep"], "etp": lay["etp"],
        "zero_stage": lay["zero_stage"],
        "batch_size": batch_size,
        "fits": est.fits,
        "memory_per_gpu_bytes": est.memory_per_gpu_bytes,
        "step_s": est.step_s,
        "ttft_s": est.ttft_s,
        "tpot_s": est.tpot_s,
        "tokens_per_s": est.tokens_per_s,
        "tokens_per_s_per_gpu": est.tokens_per_s_per_gpu,
        "mfu_frac": est.mfu_frac,
        "usd_per_hour": price * est.num_gpus if price else None,
        "usd_per_million_tokens": est.cost.usd_per_million_tokens,
        "gpu_hours_per_million_tokens": est.cost.gpu_hours_per_million_tokens,
    }


def to_dataframe(records: list[dict[str, Any]]):
    """A pandas DataFrame of ``records`` (pandas is optional; a clear error when missing)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the environment
        from ..errors import InputError

        raise InputError("pandas is not installed; `pip install pandas` to get DataFrames (records() works without it)")
    return pd.DataFrame.from_records(records)


def write_csv(path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as CSV atomically (columns: RECORD_FIELDS, then any others)."""
    import csv
    import io
    from pathlib import Path

    from ..io import atomic_write_text

    cols = list(RECORD_FIELDS) + sorted({k for r in records for k in r} - set(RECORD_FIELDS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_text(Path(path), buf.getvalue())
