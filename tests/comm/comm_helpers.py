"""Helpers for the communication tests (imported by name): profile variants and a conservation check."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moesim.comm.routing import LinkLoads
from moesim.hardware import HardwareProfile, load_hardware


def variant(name: str, *, node: dict[str, Any] | None = None, scale_out: dict[str, Any] | None = None,
            efficiency: dict[str, Any] | None = None) -> HardwareProfile:
    """A shipped profile with some numbers changed (a new object, so caches see a new network)."""
    p = load_hardware(name)
    upd: dict[str, Any] = {}
    if node:
        upd["node"] = p.node.model_copy(update=node)
    if scale_out:
        upd["scale_out"] = p.scale_out.model_copy(update=scale_out)
    if efficiency:
        upd["efficiency"] = p.efficiency.model_copy(update=efficiency)
    return p.model_copy(update=upd)


def flow_balance(loads: LinkLoads) -> dict[Any, float]:
    """out - in of every graph node (bytes), from the per-link loads."""
    topo = loads.topology
    net: dict[Any, float] = {n: 0.0 for n in topo.graph.nodes}
    for e, (u, v) in enumerate(topo.edges):
        net[u] += loads.load_bytes[e]
        net[v] -= loads.load_bytes[e]
    return net


def assert_conserved(loads: LinkLoads, sent: np.ndarray | None = None, received: np.ndarray | None = None,
                     accelerators: np.ndarray | None = None) -> None:
    """Every switch and NIC forwards exactly what it receives; GPUs inject ``sent - received`` (if given)."""
    net = flow_balance(loads)
    scale = max(1.0, float(loads.load_bytes.max(initial=0.0)))
    for n, v in net.items():
        if n[0] != "gpu":
            assert abs(v) <= 1e-9 * scale, f"{n} does not conserve bytes: out - in = {v}"
    if sent is not None and received is not None and accelerators is not None:
        for i, a in enumerate(accelerators.tolist()):
            assert net[("gpu", a)] == pytest.approx(sent[i] - received[i], rel=1e-9, abs=1e-6 * scale)
