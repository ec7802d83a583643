"""The step model: operations per layer, memory per GPU, schedule, and the whole estimate.

Layers of the model, each testable alone::

    ops.py        operations of a layer for a number of tokens: FLOPs, bytes, comm bytes (no hardware)
    parallel.py   the scenario's layout as per-GPU shares
    memory.py     memory per GPU (weights, grads, optimizer, activations, KV, buffers, workspace)
    timing.py     time of each operation on a profile (roofline + communication model)
    schedule.py   dependency graph of one layer, critical path (overlap)
    estimate.py   training step / prefill / decode, throughput, MFU, cost
"""
