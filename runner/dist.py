"""torch.distributed plumbing: process groups, local launch, and an all-to-all that works on every backend.

* Backends: ``nccl`` for CUDA devices, ``gloo`` for the CPU.
* Launch: under ``torchrun`` the usual ``RANK`` / ``WORLD_SIZE`` /
  ``MASTER_ADDR`` / ``MASTER_PORT`` variables are read (:func:`init_from_env`),
  so the same code runs one process, several on one machine, or several nodes.
  :func:`spawn_local` starts ``world_size`` processes on this machine with
  ``torch.multiprocessing`` and a free TCP port on 127.0.0.1 (tests, CLI).
* All-to-all: ``all_to_all_single`` with split sizes where the backend has it;
  otherwise ``all_to_all`` of tensor lists; otherwise paired ``isend`` /
  ``irecv``. :class:`AllToAll` probes once and records which one ran
  (``method``) so outputs can say it.

Dimension legend: X rows sent or received by this rank, D row width, R ranks.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str = "cpu") -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment; returns (rank, world, device)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(dev), rank=rank, world_size=world)
    return rank, world, dev


def _worker(rank: int, fn: Callable[..., Any], world: int, port: int, device: str, threads: int | None,
            args: tuple, result_q: Any) -> None:
    from .env import tune_allocator

    tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device("cuda", rank) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend_for(dev), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        out = fn(rank, world, dev, *args)
        result_q.put((rank, pickle.dumps(out)))  # plain pickle: no shared-memory handles outlive the child
    finally:
        dist.barrier()
        dist.destroy_process_group()


def spawn_local(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    device: str = "cpu",
    threads_per_rank: int | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, device, *args)`` in ``world_size`` local processes; return results by rank.

    ``fn`` must be importable (a module-level function) and its result
    picklable. CPU ranks share the machine, so ``threads_per_rank`` defaults to
    the current thread count divided by ``world_size`` (at least 1).
    """
    import torch.multiprocessing as mp

    if threads_per_rank is None and device != "cuda":
        threads_per_rank = max(1, torch.get_num_threads() // world_size)
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    port = free_port()
    pctx = mp.start_processes(
        _worker, args=(fn, world_size, port, device, threads_per_rank, args, q),
        nprocs=world_size, join=False, start_method="spawn",
    )
    try:
        while not pctx.join():
            pass
    except BaseException:  # an interrupt or a failed rank: stop the others too
        for p in pctx.processes:
            if p.is_alive():
                p.terminate()
        for p in pctx.processes:
            p.join(timeout=10)
        raise
    results: dict[int, Any] = {}
    while not q.empty():
        rank, out = q.get()
        results[rank] = pickle.loads(out)
    return [results[r] for r in range(world_size)]


class AllToAll:
    """Variable-size all-to-all of rows of a 2-D tensor, over whichever primitive the backend has.

    ``__call__(x_XD, send_counts, recv_counts)`` sends ``send_counts[r]``
    consecutive rows to rank ``r`` and returns the rows received, grouped by
    source rank.
    """

    METHODS = ("all_to_all_single", "all_to_all", "send_recv")

    def __init__(self, group: Any = None, method: str | None = None):
        self.group = group
        self.method = method

    def _single(self, x_XD: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        out_XD = x_XD.new_empty((sum(recv),) + tuple(x_XD.shape[1:]))
        dist.all_to_all_single(out_XD, x_XD.contiguous(), output_split_sizes=recv, input_split_sizes=send,
                               group=self.group)
        return out_XD

    def _lists(self, x_XD: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        ins = [t.contiguous() for t in torch.split(x_XD, send)]
        outs = [x_XD.new_empty((n,) + tuple(x_XD.shape[1:])) for n in recv]
        dist.all_to_all(outs, ins, group=self.group)
        return torch.cat(outs)

    def _p2p(self, x_XD: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        rank = dist.get_rank(self.group)
        ins = [t.contiguous() for t in torch.split(x_XD, send)]
        outs = [x_XD.new_empty((n,) + tuple(x_XD.shape[1:])) for n in recv]
        reqs = []
        for r in range(len(send)):
            if r == rank:
                outs[r].copy_(ins[r])
                continue
            if send[r]:
                reqs.append(dist.isend(ins[r], dist.get_global_rank(self.group, r) if self.group else r, group=self.group))
            if recv[r]:
                reqs.append(dist.irecv(outs[r], dist.get_global_rank(self.group, r) if self.group else r, group=self.group))
        for req in reqs:
            req.wait()
        return torch.cat(outs)

    def _run(self, method: str, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        return {"all_to_all_single": self._single, "all_to_all": self._lists, "send_recv": self._p2p}[method](x, send, recv)

    def probe(self, device: torch.device) -> str:
        """Pick the first method that works on this backend (collective: every rank must call it)."""
        if self.method:
            return self.method
        world = dist.get_world_size(self.group)
        x = torch.ones(world, 2, device=device)
        for m in self.METHODS:
            try:
                self._run(m, x, [1] * world, [1] * world)
                self.method = m
                return m
            except (RuntimeError, NotImplementedError, ValueError):
                continue
        raise RuntimeError("no all-to-all primitive works on this backend")

    def __call__(self, x: torch.Tensor, send: list[int], recv: list[int]) -> torch.Tensor:
        if self.method is None:
            self.probe(x.device)
        return self._run(self.method, x, send, recv)  # type: ignore[arg-type]
