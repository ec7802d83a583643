"""Expert parallelism over torch.distributed: dispatch all-to-all, local grouped experts, combine all-to-all.

Dimension legend (tensor-name suffixes)::

    T  tokens on this rank             D  model width
    E  routed experts (all ranks)      L  experts held by this rank (E / R)
    R  ranks in the EP group           A  assignments routed by this rank (T*K)
    B  rows received by this rank      F  expert FFN width

Every rank holds the router and the shared experts (replicated) and experts
``[r*L, (r+1)*L)`` (contiguous placement). One forward on rank ``r``:

1. ROUTER: route the local ``T`` tokens (optionally forced).
2. DISPATCH: sort the assignments by global expert (so they are grouped by
   destination rank), exchange per-expert counts (an all-to-all of ``R*L``
   integers), gather the rows and all-to-all them; the received rows come
   grouped by source rank then local expert and are permuted to local-expert
   order.
3. EXPERTS: the local experts over the received rows (grouped GEMM, or the
   per-expert loop for ``implementation = 'loop'``).
4. COMBINE: undo the permutation, all-to-all the rows back, weight them and
   scatter-add into the tokens.
5. SHARED_EXPERTS: the dense shared FFN on the local tokens.

The all-to-all uses :class:`.dist.AllToAll` (``all_to_all_single`` on gloo and
NCCL in torch 2.13; list all-to-all or send/recv where a build lacks it);
:attr:`EPMoELayer.a2a_method` says which ran.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moesim.calib.layer_spec import MoELayerSpec
from moesim.ops import OpKind

from .dist import AllToAll
from .layers import TORCH_DTYPES, MoEOutput, grouped_mm_support, grouped_swiglu, route, swiglu
from .timing import NullTimer


def shard_weights(full: dict[str, torch.Tensor], rank: int, world: int, num_experts: int) -> dict[str, torch.Tensor]:
    """This rank's copy: router and shared experts whole, routed experts ``[rank*L, (rank+1)*L)``."""
    L = num_experts // world
    out = {}
    for name, t in full.items():
        out[name] = t[rank * L:(rank + 1) * L].clone() if name.endswith(("_EDF", "_EFD")) else t.clone()
    return out


class EPMoELayer(torch.nn.Module):
    """One rank's part of an expert-parallel MoE layer (see module docstring)."""

    def __init__(
        self,
        spec: MoELayerSpec,
        local_weights: dict[str, torch.Tensor],
        *,
        device: torch.device | str = "cpu",
        group: object = None,
        a2a_method: str | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.group = group
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[spec.dtype]
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        if spec.num_experts % self.world:
            raise ValueError(f"EP group of {self.world} ranks does not divide num_experts ({spec.num_experts})")
        self.num_local = spec.num_experts // self.world
        for name, t in local_weights.items():
            self.register_buffer(name, t.to(device=self.device, dtype=self.dtype).contiguous())
        if self.w1_EDF.shape[0] != self.num_local:
            raise ValueError(f"local weights hold {self.w1_EDF.shape[0]} experts, expected {self.num_local}")
        self.use_grouped_mm, self.grouped_backend = grouped_mm_support(self.device, self.dtype)
        self.a2a = AllToAll(group, a2a_method)

    @property
    def a2a_method(self) -> str | None:
        return self.a2a.method

    def forward(  # type: ignore[override]
        self,
        x_TD: torch.Tensor,
        forced_expert_TK: torch.Tensor | None = None,
        *,
        timer: object | None = None,
    ) -> MoEOutput:
        timer = timer or NullTimer()
        R, L, E = self.world, self.num_local, self.spec.num_experts
        with timer.region(OpKind.ROUTER):  # type: ignore[attr-defined]
            routing = route(x_TD, self.w_router_DE, self.spec, forced_expert_TK)
        with timer.region(OpKind.DISPATCH):  # type: ignore[attr-defined]
            order_A = torch.argsort(routing.expert_A, stable=True)
            counts_E = torch.bincount(routing.expert_A, minlength=E)
            # counts_E[r*L + l]: my rows for rank r's local expert l; receive theirs for my experts
            recv_counts_RL = self.a2a(counts_E.view(R, L), [1] * R, [1] * R)
            send_rows = counts_E.view(R, L).sum(1).tolist()
            recv_rows = recv_counts_RL.sum(1).tolist()
            tok_A = routing.token_A[order_A]
            x_recv_BD = self.a2a(x_TD[tok_A], send_rows, recv_rows)
            # rows arrive as [source rank][local expert]: permute to [local expert][source rank]
            src_expert_B = torch.repeat_interleave(
                torch.arange(L, device=x_TD.device).repeat(R), recv_counts_RL.reshape(-1)
            )
            perm_B = torch.argsort(src_expert_B, stable=True)
            x_BD = x_recv_BD[perm_B]
            local_counts_L = recv_counts_RL.sum(0)
            offs_L = torch.cumsum(local_counts_L, 0).to(torch.int32)
        with timer.region(OpKind.EXPERTS):  # type: ignore[attr-defined]
            if self.spec.implementation == "loop" or not self.use_grouped_mm:
                y_BD = grouped_swiglu(x_BD, self.w1_EDF, self.w3_EDF, self.w2_EFD, local_counts_L.tolist(), offs_L, False)
            else:
                y_BD = grouped_swiglu(x_BD, self.w1_EDF, self.w3_EDF, self.w2_EFD, [], offs_L, True)
        with timer.region(OpKind.COMBINE):  # type: ignore[attr-defined]
            y_recv_BD = torch.empty_like(y_BD)
            y_recv_BD[perm_B] = y_BD
            y_AD = self.a2a(y_recv_BD, recv_rows, send_rows)
            y_TD = torch.zeros_like(x_TD)
            y_TD.index_add_(0, tok_A, y_AD * routing.weight_A[order_A].unsqueeze(1))
        if self.spec.shared_ffn_dim:
            with timer.region(OpKind.SHARED_EXPERTS):  # type: ignore[attr-defined]
                y_TD = y_TD + swiglu(x_TD, self.ws1_DS, self.ws3_DS, self.ws2_SD)
        backend = "per-expert torch.mm loop" if self.spec.implementation == "loop" else self.grouped_backend
        return MoEOutput(
            y_TD, counts_E, details={"experts_backend": backend, "all_to_all": str(self.a2a.method)}
        )


def ep_forward_worker(
    rank: int, world: int, device: torch.device, spec: MoELayerSpec, full_weights: dict[str, torch.Tensor],
    x_RTD: torch.Tensor, forced_RTK: torch.Tensor | None,
) -> dict[str, object]:
    """One rank of an EP forward on its slice of ``x_RTD`` (for tests and checks; see :func:`.dist.spawn_local`)."""
    layer = EPMoELayer(spec, shard_weights(full_weights, rank, world, spec.num_experts), device=device)
    forced = None if forced_RTK is None else forced_RTK[rank]
    out = layer(x_RTD[rank].to(device=device, dtype=layer.dtype), forced)
    return {"y_TD": out.y_TD.float().cpu(), "a2a_method": layer.a2a_method, "experts_backend": out.details["experts_backend"]}
