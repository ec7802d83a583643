"""Operation kinds: the stage names shared by the simulator and the runner.

Every MoE codebase names the same stages (Megatron-LM ``MoELayer.forward``:
route, dispatch, experts, combine, shared experts). The simulator's operations
and the runner's timed regions both use this enum, so predictions and
measurements join on it rather than on repeated strings.
"""

from __future__ import annotations

from enum import Enum


class OpKind(str, Enum):
    """A stage of a transformer layer (or the model's ends)."""

    EMBEDDING = "embedding"
    ATTENTION = "attention"
    ROUTER = "router"
    DISPATCH = "dispatch"
    EXPERTS = "experts"
    COMBINE = "combine"
    SHARED_EXPERTS = "shared_experts"
    DENSE_FFN = "dense_ffn"
    LM_HEAD = "lm_head"
    # whole-step extras
    GRAD_SYNC = "grad_sync"
    OPTIMIZER = "optimizer"
    PIPELINE = "pipeline"
    TP_COMM = "tp_comm"

    def __str__(self) -> str:  # render as the plain name
        return self.value


#: stages of one MoE layer, in execution order
MOE_LAYER_STAGES = (OpKind.ROUTER, OpKind.DISPATCH, OpKind.EXPERTS, OpKind.COMBINE, OpKind.SHARED_EXPERTS)
