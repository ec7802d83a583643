"""``moesim comm``: collective time over the topology (all-to-all, all-reduce, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from .. import limits as L
from .common import Bounded, emit_json, json_option, writable

#: API field -> the flag that sets it (errors name the flag)
FLAGS = {
    "hardware": "--hardware",
    "ranks": "--ranks",
    "ranks_per_node": "--ranks-per-node",
    "size_bytes": "--bytes",
    "algorithm": "--algorithm",
    "node_limit": "--node-limit",
    "experts": "--experts",
    "num_experts": "--experts",
    "top_k": "--top-k",
    "tokens_per_rank": "--tokens-per-rank",
    "bytes_per_token": "--bytes-per-token",
    "combine_bytes_per_token": "--combine-bytes-per-token",
    "distribution": "--distribution",
    "hidden_size": "--hidden",
    "dtype": "--dispatch-dtype",
    "expert_to_rank": "--experts",
}


def _named(exc: Exception) -> Exception:
    """Give an InputError without a source the flag of its field."""
    from ..errors import InputError

    if isinstance(exc, InputError) and exc.source is None:
        flag = FLAGS.get(exc.field or "", None) or FLAGS.get((exc.field or "").split(".")[0], None)
        return InputError(exc.message, source=flag or "moesim comm", field=exc.field)
    return exc


def _guard(fn: Callable[..., None]) -> Callable[..., None]:
    def run(**kwargs: Any) -> None:
        try:
            fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - only InputError is renamed; everything else re-raised as is
            raise _named(exc) from None

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _size(text: str | None, flag: str) -> float | None:
    from ..errors import InputError
    from ..units import parse_quantity

    if text is None:
        return None
    L.NAME.check(text, source=flag)
    try:
        v = parse_quantity(text, "bytes")
    except ValueError as exc:
        raise InputError(str(exc), source=flag) from None
    if v <= 0:
        raise InputError(f"must be a positive size such as 64MB or 1GiB, got {L.short(text)}", source=flag)
    return L.MESSAGE_BYTES.check(v, source=flag)


def _sweep(text: str | None) -> list[float] | None:
    """``MIN:MAX`` -> MIN, 2 MIN, 4 MIN, ... up to MAX (as nccl-tests -b MIN -e MAX -f 2)."""
    from ..errors import InputError

    if text is None:
        return None
    lo_t, sep, hi_t = text.partition(":")
    if not sep:
        raise InputError(f"expected MIN:MAX such as 1KB:1GB, got {L.short(text)}", source="--sweep")
    lo, hi = _size(lo_t, "--sweep"), _size(hi_t, "--sweep")
    assert lo is not None and hi is not None
    if hi < lo:
        raise InputError(f"MAX ({hi_t}) is smaller than MIN ({lo_t})", source="--sweep")
    sizes = []
    s = lo
    while s <= hi * (1 + 1e-12) and len(sizes) < 64:
        sizes.append(s)
        s *= 2
    if sizes[-1] < hi * (1 - 1e-12):
        sizes.append(hi)
    return sizes


def _check_plot(plot_path: Path | None) -> None:
    from ..errors import InputError

    if plot_path is None:
        return
    if plot_path.suffix.lower() != ".png":
        raise InputError(f"plot file must end in .png, got {L.short(plot_path.name)}", source="--plot")
    writable(plot_path, "--plot")
    from .render.comm import plot_available

    if not plot_available():
        raise InputError("matplotlib is not installed; install it with: pip install 'moesim[plot]'", source="--plot")


hardware_option = click.option("--hardware", "-H", "hardware", required=True, metavar="NAME_OR_PATH",
                               help="Hardware profile (moesim hardware list) or a .toml/.json file.")
ranks_option = click.option("--ranks", "-n", "ranks", type=Bounded(L.GPUS, lower=False), required=True,
                            help="Ranks in the group.")
rpn_option = click.option("--ranks-per-node", "ranks_per_node", type=Bounded(L.GPUS, lower=False), default=None,
                          help="Ranks of the group per node (default: fill nodes).")
plot_option = click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                           metavar="FILE.png", help="Plot time and bandwidth over a size sweep (needs matplotlib).")


@click.group()
def comm() -> None:
    """Time of collectives routed over the topology of a hardware profile.

    Bandwidths follow nccl-tests: algbw = S / t, busbw = algbw x 2(n-1)/n (all-reduce),
    (n-1)/n (all-gather, reduce-scatter, all-to-all), 1 (sendrecv).
    """


def _collective_command(name: str, collective: str, algorithms: tuple[str, ...], summary: str) -> click.Command:
    @comm.command(name, help=summary)
    @hardware_option
    @ranks_option
    @click.option("--bytes", "-b", "size", metavar="SIZE", default=None, help="Size S, e.g. 64MB or 1GiB.")
    @rpn_option
    @click.option("--algorithm", "-a", default="auto", show_default=True, metavar="NAME",
                  help=f"{' | '.join(algorithms)}.")
    @click.option("--sweep", "sweep", metavar="MIN:MAX", default=None,
                  help="Sizes MIN, 2 MIN, ... MAX (like nccl-tests -b MIN -e MAX -f 2).")
    @plot_option
    @json_option
    @_guard
    def cmd(hardware: str, ranks: int, size: str | None, ranks_per_node: int | None, algorithm: str,
            sweep: str | None, plot_path: Path | None, as_json: bool) -> None:
        from ..comm import api
        from ..comm.collectives import check_collective
        from ..errors import InputError

        check_collective(collective, algorithm, source="--algorithm")
        s = _size(size, "--bytes")
        sizes = _sweep(sweep)
        _check_plot(plot_path)
        if s is None and sizes is None:
            raise InputError("give --bytes SIZE (e.g. 64MB) or --sweep MIN:MAX", source="--bytes")
        prof = api._profile(hardware)
        if sizes is None and plot_path is not None:
            sizes = _sweep(f"1KiB:{s}") if s and s >= 1024 else [s]
        if sizes is None:
            assert s is not None
            res = api.collective(prof, collective, num_ranks=ranks, size_bytes=s, ranks_per_node=ranks_per_node,
                                 algorithm=algorithm)
            if as_json:
                emit_json(res)
            else:
                from .render.comm import render_collective

                render_collective(res)
            return
        _show_sweep(api.sweep(prof, collective, num_ranks=ranks, sizes=sizes, ranks_per_node=ranks_per_node,
                              algorithm=algorithm), as_json, plot_path)

    return cmd


_collective_command("all-reduce", "all_reduce", ("auto", "ring", "tree", "nvls"),
                    "All-reduce of S bytes (ring, tree, or NVLink SHARP; auto picks the fastest).")
_collective_command("all-gather", "all_gather", ("auto", "ring"),
                    "All-gather; S is the gathered array (nccl-tests convention).")
_collective_command("reduce-scatter", "reduce_scatter", ("auto", "ring"),
                    "Reduce-scatter; S is the whole array (nccl-tests convention).")
_collective_command("sendrecv", "sendrecv", ("auto", "direct"),
                    "Point-to-point: rank i sends S bytes to rank i+1 (pipeline stages; --ranks 2 for one pair).")


@comm.command("all-to-all")
@hardware_option
@ranks_option
@rpn_option
@click.option("--tokens-per-rank", "-t", "tokens_per_rank", type=Bounded(L.TOKENS_PER_RANK, lower=False), default=None,
              help="Tokens entering each rank.")
@click.option("--top-k", "-k", "top_k", type=Bounded(L.EXPERTS, lower=False), default=None, help="Experts per token.")
@click.option("--experts", "-e", "experts", type=Bounded(L.EXPERTS, lower=False), default=None,
              help="Routed experts (placed contiguously).")
@click.option("--bytes-per-token", "bytes_per_token", default=None, metavar="SIZE",
              help="Bytes of one dispatched token copy, e.g. 7392 or 14KiB (or give --hidden).")
@click.option("--hidden", "hidden", type=Bounded(L.WIDTH, lower=False), default=None, help="Hidden size; with --dispatch-dtype gives the token bytes.")
@click.option("--dispatch-dtype", "dispatch_dtype", default="bf16", show_default=True, metavar="DTYPE",
              help="bf16 | fp16 | fp32 | fp8 (fp8 adds one 4-byte scale per 128 elements).")
@click.option("--combine-bytes-per-token", "combine_bytes_per_token", default=None, metavar="SIZE",
              help="Bytes of one combined token copy (default: bf16 of --hidden, else --bytes-per-token).")
@click.option("--node-limit", "-m", "node_limit", type=Bounded(L.NODES, lower=False), default=None, help="Each token reaches at most M nodes.")
@click.option("--algorithm", "-a", default=None, metavar="NAME",
              help="direct | hierarchical (once per node over the network, then scale-up, as DeepEP); "
                   "default: hierarchical, or direct in nccl-tests mode.")
@click.option("--distribution", "-d", default="uniform", show_default=True, metavar="DIST",
              help="uniform | zipf:S[:SEED] | dirichlet:ALPHA[:SEED] | hist:N,N,... | hist:FILE.json|FILE.csv[@LAYER].")
@click.option("--bytes", "-b", "size", metavar="SIZE", default=None,
              help="nccl-tests mode instead: every rank sends S/n to every rank (S per rank).")
@click.option("--sweep", "sweep", metavar="MIN:MAX", default=None, help="nccl-tests mode over sizes MIN..MAX.")
@plot_option
@json_option
@_guard
def all_to_all(hardware: str, ranks: int, ranks_per_node: int | None, tokens_per_rank: float | None,
               top_k: int | None, experts: int | None, bytes_per_token: str | None, hidden: int | None,
               dispatch_dtype: str, combine_bytes_per_token: str | None, node_limit: int | None, algorithm: str | None,
               distribution: str, size: str | None, sweep: str | None, plot_path: Path | None,
               as_json: bool) -> None:
    """Expert-parallel dispatch and combine (give --tokens-per-rank, --top-k, --experts and
    --bytes-per-token or --hidden), or an nccl-tests all-to-all (give --bytes or --sweep)."""
    from ..comm import api
    from ..comm.collectives import check_collective
    from ..errors import InputError

    ep_flags = [f for f, v in (("--tokens-per-rank", tokens_per_rank), ("--top-k", top_k), ("--experts", experts))
                if v is not None]
    s = _size(size, "--bytes")
    sizes = _sweep(sweep)
    _check_plot(plot_path)
    prof = api._profile(hardware)
    if s is not None or sizes is not None:
        if ep_flags:
            raise InputError(f"--bytes/--sweep time an nccl-tests all-to-all; drop {', '.join(ep_flags)}",
                             source=ep_flags[0])
        alg = algorithm or "direct"
        check_collective("all_to_all", alg, source="--algorithm")
        if sizes is None and plot_path is not None:
            sizes = _sweep(f"1KiB:{s}") if s and s >= 1024 else [s]
        if sizes is None:
            assert s is not None
            res = api.collective(prof, "all_to_all", num_ranks=ranks, size_bytes=s, ranks_per_node=ranks_per_node,
                                 algorithm=alg)
            if as_json:
                emit_json(res)
            else:
                from .render.comm import render_collective

                render_collective(res)
            return
        _show_sweep(api.sweep(prof, "all_to_all", num_ranks=ranks, sizes=sizes, ranks_per_node=ranks_per_node,
                              algorithm=alg), as_json, plot_path)
        return

    algorithm = algorithm or "hierarchical"
    check_collective("dispatch", algorithm, source="--algorithm")
    missing = [f for f, v in (("--tokens-per-rank", tokens_per_rank), ("--top-k", top_k), ("--experts", experts))
               if v is None]
    if missing:
        raise InputError(f"expert-parallel mode needs {', '.join(missing)} (or give --bytes for nccl-tests mode)",
                         source=missing[0])
    if bytes_per_token is not None and hidden is not None:
        raise InputError("give --bytes-per-token or --hidden, not both", source="--hidden")
    if bytes_per_token is not None:
        b = _size(bytes_per_token, "--bytes-per-token")
    elif hidden is not None:
        b = api.dispatch_bytes_per_token(hidden, dispatch_dtype)
    else:
        raise InputError("give --bytes-per-token SIZE or --hidden H (with --dispatch-dtype)", source="--bytes-per-token")
    if combine_bytes_per_token is not None:
        cb = _size(combine_bytes_per_token, "--combine-bytes-per-token")
    elif hidden is not None:
        cb = api.dispatch_bytes_per_token(hidden, "bf16")
    else:
        cb = b
    assert b is not None and cb is not None and tokens_per_rank is not None and top_k is not None
    assert experts is not None
    msg = L.routing_problem(distribution, experts, top_k)
    if msg is not None:
        raise InputError(msg, source="--distribution")
    kw = dict(num_ranks=ranks, top_k=top_k, num_experts=experts, bytes_per_token=b, combine_bytes_per_token=cb,
              node_limit=node_limit, algorithm=algorithm, distribution=distribution, ranks_per_node=ranks_per_node)
    res = api.all_to_all(prof, tokens_per_rank=tokens_per_rank, **kw)
    if as_json:
        emit_json(res)
    else:
        from .render.comm import render_all_to_all

        render_all_to_all(res)
    if plot_path is not None:
        tokens = []
        t = 1.0
        while t < tokens_per_rank:
            tokens.append(t)
            t *= 2
        tokens.append(float(tokens_per_rank))
        series = [api.all_to_all(prof, tokens_per_rank=t, **kw) for t in tokens]
        from .render.comm import plot_all_to_all

        plot_all_to_all(series, plot_path)


@comm.command("topology")
@hardware_option
@ranks_option
@json_option
@_guard
def topology(hardware: str, ranks: int, as_json: bool) -> None:
    """The graph built for a cluster of --ranks accelerators: nodes and links by kind."""
    from ..comm import api

    topo = api.topology(hardware, ranks)
    summary = topology_summary(topo)
    if as_json:
        emit_json(summary)
        return
    from .render.comm import render_topology

    render_topology(summary)


def topology_summary(topo) -> dict:  # noqa: ANN001
    import numpy as np

    from ..comm.topology import KINDS_BY_CODE

    kinds: dict[str, dict[str, float]] = {}
    for code in np.unique(topo.kind):
        sel = topo.kind == code
        cap = topo.capacity_bytes_per_s[sel]
        kinds[KINDS_BY_CODE[int(code)].value] = {
            "num_links": int(sel.sum()),
            "capacity_bytes_per_s": float(cap[0]),
            "efficiency_frac": float(topo.efficiency_frac[sel][0]),
            "latency_s": float(topo.latency_s[sel][0]),
        }
    node_kinds: dict[str, int] = {}
    for n in topo.graph.nodes:
        node_kinds[n[0]] = node_kinds.get(n[0], 0) + 1
    lay = topo.layout
    return {
        "hardware": topo.spec.profile_name,
        "num_nodes": topo.num_nodes,
        "accelerators_per_node": topo.node_size,
        "scale_up": topo.spec.scale_up,
        "scale_up_domain_size": topo.domain_size,
        "nics_per_node": topo.nics_per_node,
        "num_rails": lay.num_rails if lay else 0,
        "nodes_per_leaf_group": lay.nodes_per_leaf_group if lay else 0,
        "num_leaves": topo.num_leaves,
        "num_spines": topo.num_spines,
        "oversubscription_ratio": topo.spec.oversubscription_ratio,
        "graph_nodes": node_kinds,
        "links": kinds,
    }


def _show_sweep(results, as_json: bool, plot_path) -> None:
    """Print a message-size sweep (JSON or table) and draw it when asked."""
    if as_json:
        emit_json(results)
    else:
        from .render.comm import render_sweep

        render_sweep(results)
    if plot_path is not None:
        from .render.comm import plot_sweep

        plot_sweep(results, plot_path)
