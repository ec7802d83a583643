"""The numbers of a hardware profile that shape its network: a leaf module of ``moesim.comm``.

:class:`NetworkSpec` is what the topology, the placement of groups on nodes and
the routing are keyed on; it depends on nothing else in ``moesim.comm``, so the
modules above it import it without a cycle (spec -> topology / placement ->
routing -> collectives -> api).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..hardware import HardwareProfile


@dataclass(frozen=True)
class NetworkSpec:
    """The numbers of a profile that shape the network (the topology cache key).

    Every field is a number or a string copied from the profile (see
    :func:`network_spec`); bandwidths in bytes/s, latencies in seconds.
    """

    profile_name: str
    accelerators_per_node: int
    scale_up: str
    scale_up_domain_size: int
    scale_up_bytes_per_s: float
    scale_up_latency_s: float
    nvls_sharp: bool
    fabric: str
    nics_per_node: int
    nic_bytes_per_s: float
    scale_out_latency_s: float
    rail_optimized: bool
    oversubscription_ratio: float
    leaf_switch_ports: int
    max_nodes: int | None
    scale_up_frac: float
    scale_out_frac: float
    collective_overhead_s: float


def network_spec(profile: HardwareProfile) -> NetworkSpec:
    """Extract the network-relevant numbers of ``profile`` (cheap; used as a cache key)."""
    n, so, eff = profile.node, profile.scale_out, profile.efficiency
    return NetworkSpec(
        profile_name=profile.name,
        accelerators_per_node=n.accelerators_per_node,
        scale_up=n.scale_up,
        scale_up_domain_size=n.scale_up_domain_size,
        scale_up_bytes_per_s=float(n.scale_up_bandwidth_per_accelerator_bytes_per_s or 0.0),
        scale_up_latency_s=n.scale_up_latency_s,
        nvls_sharp=n.nvls_sharp,
        fabric=so.fabric,
        nics_per_node=so.nics_per_node if so.fabric != "none" else 0,
        nic_bytes_per_s=float(so.bandwidth_per_nic_bytes_per_s or 0.0),
        scale_out_latency_s=so.latency_s,
        rail_optimized=so.rail_optimized,
        oversubscription_ratio=so.oversubscription_ratio,
        leaf_switch_ports=so.leaf_switch_ports,
        max_nodes=None if so.fabric == "none" else so.max_nodes,
        scale_up_frac=eff.scale_up_frac,
        scale_out_frac=eff.scale_out_frac,
        collective_overhead_s=eff.collective_overhead_s,
    )


def nodes_for(profile: HardwareProfile | NetworkSpec, num_accelerators: int) -> int:
    """Routing nodes needed to hold ``num_accelerators`` (whole nodes)."""
    spec = profile if isinstance(profile, NetworkSpec) else network_spec(profile)
    size = max(spec.accelerators_per_node, spec.scale_up_domain_size)
    return max(1, -(-int(num_accelerators) // size))


def check_cluster(spec: NetworkSpec, num_nodes: int, *, source: str | None = None) -> None:
    """Raise :class:`InputError` unless ``num_nodes`` routing nodes fit the profile's cluster."""
    size = max(spec.accelerators_per_node, spec.scale_up_domain_size)
    phys_nodes = num_nodes * (size // spec.accelerators_per_node)
    if spec.fabric == "none" and num_nodes > 1:
        raise InputError(
            f"{spec.profile_name} has no scale-out fabric: at most {size} accelerators "
            f"({num_nodes * size} requested)",
            source=source,
            field="ranks",
        )
    if spec.max_nodes is not None and phys_nodes > spec.max_nodes:
        raise InputError(
            f"{num_nodes * size} accelerators need {phys_nodes} nodes but {spec.profile_name} describes at most "
            f"{spec.max_nodes} nodes ({spec.max_nodes * spec.accelerators_per_node} accelerators, scale_out.max_nodes)",
            source=source,
            field="ranks",
        )
