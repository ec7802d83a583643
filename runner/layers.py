"""MoE FFN layers in PyTorch: the per-expert reference loop, capacity-padded and grouped-GEMM versions.

Dimension legend (tensor-name suffixes, as in torchtitan's ``moe.py``)::

    T  tokens on this rank                  D  model width (d_model)
    E  routed experts                       F  expert FFN width (d_expert_ffn)
    K  experts per token (top-k)            A  token-expert assignments (T*K, or E*C for expert choice)
    C  capacity (slots per expert)          S  shared-expert FFN width (num_shared * d_shared_ffn)
    G  expert groups (group-limited)        N  experts per group (E / G)

Experts are SwiGLU FFNs: ``y = (silu(x @ w1) * (x @ w3)) @ w2`` with
``w1_EDF``, ``w3_EDF``, ``w2_EFD`` (stored so that ``x_TD @ w1_EDF[e]`` works
directly, which is also the ``(groups, K, N)`` layout ``grouped_mm`` takes).

Stages follow :class:`moesim.ops.OpKind` (Megatron-LM ``MoELayer.forward``):
ROUTER (logits -> scores -> probs -> routing map), DISPATCH (gather tokens into
expert order), EXPERTS, COMBINE (weight and scatter-add back), SHARED_EXPERTS.

* ``loop`` (numerical reference): for every expert, select its assignments,
  gather, run the FFN with ``torch.mm``, scatter-add. Kernel count grows with E.
* ``padded`` (GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2021):
  a ``[E, C, D]`` buffer with ``C = ceil(cf * T * K / E)`` slots per expert;
  assignments past capacity are dropped (first choices get slots before
  second choices, as in GShard); the experts run as one batched ``bmm`` on the
  padded buffer, so compute is ``E * C`` rows whatever the load.
* ``grouped`` (dropless; MegaBlocks, Gale et al. 2023, and torchtitan): sort
  the assignments by expert and run one grouped GEMM over the jagged groups
  (``torch.nn.functional.grouped_mm`` where this build runs it for the device
  and dtype, else a per-expert ``torch.mm`` fallback; :attr:`MoELayer.grouped_backend`
  says which ran).

Routing can be forced (``forced_expert_TK``): the router still computes its
logits and top-k (so ROUTER costs what it costs), then the experts come from
the given array (sampled from the expert-load model) and the combine weights
are the router's probabilities at those experts, renormalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from moesim.calib.layer_spec import MoELayerSpec
from moesim.ops import OpKind

from .timing import NullTimer

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_GROUPED_MM_NAME = (
    "torch.nn.functional.grouped_mm" if hasattr(F, "grouped_mm") else ("torch._grouped_mm" if _GROUPED_MM else None)
)
_grouped_support: dict[tuple[str, torch.dtype], tuple[bool, str]] = {}


def grouped_mm_support(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether this torch build runs a grouped GEMM for ``device`` and ``dtype`` (probed once, cached).

    Returns ``(ok, detail)`` where ``detail`` names the function or the reason
    for the per-expert fallback. The probe multiplies a 3-group jagged problem
    (one empty group) and checks it against per-group ``torch.mm``.
    """
    key = (device.type, dtype)
    if key in _grouped_support:
        return _grouped_support[key]
    if _GROUPED_MM is None:
        result = (False, f"per-expert torch.mm fallback (torch {torch.__version__} has no grouped_mm)")
    else:
        try:
            a = torch.randn(48, 32, device=device).to(dtype)
            b = torch.randn(3, 32, 16, device=device).to(dtype)
            offs = torch.tensor([16, 16, 48], dtype=torch.int32, device=device)
            out = _GROUPED_MM(a, b, offs=offs)
            ref = torch.cat([a[:16] @ b[0], a[16:48] @ b[2]])
            if not torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-2):
                raise RuntimeError("result differs from per-group torch.mm")
            result = (True, _GROUPED_MM_NAME or "grouped_mm")
        except Exception as exc:  # unsupported device / dtype / layout
            msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            result = (False, f"per-expert torch.mm fallback ({_GROUPED_MM_NAME} failed on {device.type}/{dtype}: {msg})")
    _grouped_support[key] = result
    return result


# --------------------------------------------------------------------------- routing


@dataclass
class Routing:
    """Assignments of tokens to experts, flattened (one entry per token-expert pair).

    ``slot_A`` is the choice rank (0 for a token's first expert); the padded
    implementation fills capacity in slot-major order.
    """

    token_A: torch.Tensor  # int64 [A]
    expert_A: torch.Tensor  # int64 [A]
    weight_A: torch.Tensor  # [A], activation dtype
    slot_A: torch.Tensor  # int64 [A]
    num_experts: int

    def tokens_per_expert(self) -> torch.Tensor:
        return torch.bincount(self.expert_A, minlength=self.num_experts)


def route(
    x_TD: torch.Tensor,
    w_router_DE: torch.Tensor,
    spec: MoELayerSpec,
    forced_expert_TK: torch.Tensor | None = None,
) -> Routing:
    """Router: logits -> scores -> top-k (group-limited if configured) -> probs -> assignments.

    Scores are computed in fp32. For token choice, ``probs`` are the scores at
    the chosen experts, renormalised when ``spec.norm_topk_prob`` (softmax) and
    always for sigmoid scoring (DeepSeek-V3). Expert choice: each expert takes
    its ``capacity`` highest-scoring tokens, weight = the softmax score.
    """
    T = x_TD.shape[0]
    E = spec.num_experts
    logits_TE = (x_TD @ w_router_DE).float()
    if spec.router == "expert_choice":
        scores_TE = torch.softmax(logits_TE, dim=-1)
        C = min(spec.capacity, T)
        gate_EC, token_EC = torch.topk(scores_TE.t(), C, dim=-1)
        expert_EC = torch.arange(E, device=x_TD.device).unsqueeze(1).expand(E, C)
        slot_EC = torch.arange(C, device=x_TD.device).unsqueeze(0).expand(E, C)
        return Routing(
            token_A=token_EC.reshape(-1), expert_A=expert_EC.reshape(-1),
            weight_A=gate_EC.reshape(-1).to(x_TD.dtype), slot_A=slot_EC.reshape(-1), num_experts=E,
        )
    scores_TE = torch.softmax(logits_TE, dim=-1) if spec.router == "softmax" else torch.sigmoid(logits_TE)
    select_TE = scores_TE
    if spec.num_groups > 1:
        G = spec.num_groups
        group_score_TG = scores_TE.view(T, G, E // G).amax(dim=-1)
        keep_TG = torch.zeros_like(group_score_TG, dtype=torch.bool)
        keep_TG.scatter_(1, torch.topk(group_score_TG, spec.topk_groups, dim=-1).indices, True)
        keep_TE = keep_TG.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
        select_TE = scores_TE.masked_fill(~keep_TE, float("-inf"))
    expert_TK = torch.topk(select_TE, spec.top_k, dim=-1).indices
    if forced_expert_TK is not None:
        if tuple(forced_expert_TK.shape) != (T, spec.top_k):
            raise ValueError(f"forced_expert_TK has shape {tuple(forced_expert_TK.shape)}, expected {(T, spec.top_k)}")
        expert_TK = forced_expert_TK.to(device=x_TD.device, dtype=torch.int64)
    probs_TK = scores_TE.gather(1, expert_TK)
    if spec.router == "sigmoid" or spec.norm_topk_prob:
        probs_TK = probs_TK / probs_TK.sum(dim=-1, keepdim=True)
    token_TK = torch.arange(T, device=x_TD.device).unsqueeze(1).expand(T, spec.top_k)
    slot_TK = torch.arange(spec.top_k, device=x_TD.device).unsqueeze(0).expand(T, spec.top_k)
    return Routing(
        token_A=token_TK.reshape(-1), expert_A=expert_TK.reshape(-1),
        weight_A=probs_TK.reshape(-1).to(x_TD.dtype), slot_A=slot_TK.reshape(-1), num_experts=E,
    )


# --------------------------------------------------------------------------- expert math


def swiglu(x_XD: torch.Tensor, w1_DF: torch.Tensor, w3_DF: torch.Tensor, w2_FD: torch.Tensor) -> torch.Tensor:
    """``(silu(x @ w1) * (x @ w3)) @ w2`` for one expert (or the dense shared FFN)."""
    return (F.silu(x_XD @ w1_DF) * (x_XD @ w3_DF)) @ w2_FD


def grouped_swiglu(
    x_AD: torch.Tensor, w1_EDF: torch.Tensor, w3_EDF: torch.Tensor, w2_EFD: torch.Tensor,
    counts_E: list[int], offs_E: torch.Tensor, use_grouped_mm: bool,
) -> torch.Tensor:
    """SwiGLU over rows already sorted by expert (``counts_E`` rows per expert)."""
    if use_grouped_mm:
        h1_AF = _GROUPED_MM(x_AD, w1_EDF, offs=offs_E)
        h3_AF = _GROUPED_MM(x_AD, w3_EDF, offs=offs_E)
        return _GROUPED_MM(F.silu(h1_AF) * h3_AF, w2_EFD, offs=offs_E)
    out_AD = torch.empty_like(x_AD)
    start = 0
    for e, n in enumerate(counts_E):
        if n:
            out_AD[start:start + n] = swiglu(x_AD[start:start + n], w1_EDF[e], w3_EDF[e], w2_EFD[e])
        start += n
    return out_AD


# --------------------------------------------------------------------------- the layer


@dataclass
class MoEOutput:
    """Output of one forward and what the routing did."""

    y_TD: torch.Tensor
    tokens_per_expert_E: torch.Tensor  # assignments routed to each expert (before drops)
    num_dropped: int = 0
    details: dict[str, str] = field(default_factory=dict)


def init_weights(spec: MoELayerSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic fp32 CPU weights, scaled 1/sqrt(fan_in) so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    D, Fd, E, S = spec.d_model, spec.d_expert_ffn, spec.num_experts, spec.shared_ffn_dim

    def rnd(*shape: int, fan_in: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(fan_in)

    w = {
        "w_router_DE": rnd(D, E, fan_in=D),
        "w1_EDF": rnd(E, D, Fd, fan_in=D),
        "w3_EDF": rnd(E, D, Fd, fan_in=D),
        "w2_EFD": rnd(E, Fd, D, fan_in=Fd),
    }
    if S:
        w |= {"ws1_DS": rnd(D, S, fan_in=D), "ws3_DS": rnd(D, S, fan_in=D), "ws2_SD": rnd(S, D, fan_in=S)}
    return w


class MoELayer(torch.nn.Module):
    """A routed-expert SwiGLU layer with optional shared experts (single process).

    ``forward(x_TD, implementation=...)`` runs any of the three implementations on
    the same weights, which is how the equivalence tests compare them.
    """

    def __init__(
        self,
        spec: MoELayerSpec,
        *,
        device: torch.device | str = "cpu",
        weights: dict[str, torch.Tensor] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[spec.dtype]
        w = weights if weights is not None else init_weights(spec, seed)
        for name, t in w.items():
            self.register_buffer(name, t.to(device=self.device, dtype=self.dtype).contiguous())
        ok, detail = grouped_mm_support(self.device, self.dtype)
        self.use_grouped_mm = ok
        self.grouped_backend = detail

    @property
    def num_experts(self) -> int:
        return self.spec.num_experts

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.named_buffers()}

    def forward(  # type: ignore[override]
        self,
        x_TD: torch.Tensor,
        forced_expert_TK: torch.Tensor | None = None,
        *,
        implementation: str | None = None,
        timer: object | None = None,
    ) -> MoEOutput:
        impl = implementation or self.spec.implementation
        timer = timer or NullTimer()
        with timer.region(OpKind.ROUTER):  # type: ignore[attr-defined]
            routing = route(x_TD, self.w_router_DE, self.spec, forced_expert_TK)
        if impl == "loop":
            out = self._loop(x_TD, routing, timer)
        elif impl == "padded":
            out = self._padded(x_TD, routing, timer)
        elif impl == "grouped":
            out = self._grouped(x_TD, routing, timer)
        else:
            raise ValueError(f"unknown implementation {impl!r}; allowed: loop, padded, grouped")
        if self.spec.shared_ffn_dim:
            with timer.region(OpKind.SHARED_EXPERTS):  # type: ignore[attr-defined]
                out.y_TD = out.y_TD + swiglu(x_TD, self.ws1_DS, self.ws3_DS, self.ws2_SD)
        return out

    # -- loop: the numerical reference -----------------------------------------------------

    def _loop(self, x_TD: torch.Tensor, routing: Routing, timer) -> MoEOutput:
        E = self.num_experts
        with timer.region(OpKind.DISPATCH):
            picked = []
            for e in range(E):
                idx_n = torch.nonzero(routing.expert_A == e).squeeze(1)
                tok_n = routing.token_A[idx_n]
                picked.append((tok_n, routing.weight_A[idx_n], x_TD[tok_n]))
        with timer.region(OpKind.EXPERTS):
            ys = [
                swiglu(x_nD, self.w1_EDF[e], self.w3_EDF[e], self.w2_EFD[e]) if x_nD.shape[0] else x_nD
                for e, (_, _, x_nD) in enumerate(picked)
            ]
        with timer.region(OpKind.COMBINE):
            y_TD = torch.zeros_like(x_TD)
            for (tok_n, w_n, _), y_nD in zip(picked, ys):
                if tok_n.numel():
                    y_TD.index_add_(0, tok_n, y_nD * w_n.unsqueeze(1))
        return MoEOutput(y_TD, routing.tokens_per_expert(), details={"experts_backend": "per-expert torch.mm loop"})

    # -- padded: capacity buffer, batched bmm, drops ------------------------------------------

    def _padded(self, x_TD: torch.Tensor, routing: Routing, timer) -> MoEOutput:
        E = self.num_experts
        if self.spec.router == "expert_choice":
            C = min(self.spec.capacity, x_TD.shape[0])
        else:
            C = self.spec.capacity
        D = x_TD.shape[1]
        with timer.region(OpKind.DISPATCH):
            # slot-major priority: every token's first choice before any second choice (GShard)
            prio_A = torch.argsort(routing.slot_A * x_TD.shape[0] + routing.token_A, stable=True)
            expert_P = routing.expert_A[prio_A]
            onehot_PE = F.one_hot(expert_P, E)
            pos_P = (torch.cumsum(onehot_PE, dim=0) - 1).gather(1, expert_P.unsqueeze(1)).squeeze(1)
            keep_P = pos_P < C
            kept = prio_A[keep_P]
            exp_k, pos_k, tok_k = expert_P[keep_P], pos_P[keep_P], routing.token_A[kept]
            x_ECD = torch.zeros(E, C, D, dtype=x_TD.dtype, device=x_TD.device)
            x_ECD[exp_k, pos_k] = x_TD[tok_k]
        with timer.region(OpKind.EXPERTS):
            y_ECD = torch.bmm(F.silu(torch.bmm(x_ECD, self.w1_EDF)) * torch.bmm(x_ECD, self.w3_EDF), self.w2_EFD)
        with timer.region(OpKind.COMBINE):
            y_TD = torch.zeros_like(x_TD)
            y_TD.index_add_(0, tok_k, y_ECD[exp_k, pos_k] * routing.weight_A[kept].unsqueeze(1))
        num_dropped = int(routing.expert_A.numel() - kept.numel())
        return MoEOutput(y_TD, routing.tokens_per_expert(), num_dropped, details={"experts_backend": "torch.bmm on [E, C, D]"})

    # -- grouped: sorted, dropless -------------------------------------------------------------

    def _grouped(self, x_TD: torch.Tensor, routing: Routing, timer) -> MoEOutput:
        E = self.num_experts
        with timer.region(OpKind.DISPATCH):
            order_A = torch.argsort(routing.expert_A, stable=True)
            counts_E = torch.bincount(routing.expert_A, minlength=E)
            tok_A = routing.token_A[order_A]
            x_AD = x_TD[tok_A]
            offs_E = torch.cumsum(counts_E, 0).to(torch.int32)
            counts = counts_E.tolist() if not self.use_grouped_mm else []
        with timer.region(OpKind.EXPERTS):
            y_AD = grouped_swiglu(x_AD, self.w1_EDF, self.w3_EDF, self.w2_EFD, counts, offs_E, self.use_grouped_mm)
        with timer.region(OpKind.COMBINE):
            y_TD = torch.zeros_like(x_TD)
            y_TD.index_add_(0, tok_A, y_AD * routing.weight_A[order_A].unsqueeze(1))
        return MoEOutput(y_TD, counts_E, details={"experts_backend": self.grouped_backend})
