"""Expert load and routing: distributions, routers, capacity, per-rank load, placement, traffic.

The entry point is :func:`moesim.load.api.expert_load` (also ``moesim.expert_load``).
Submodules: ``distributions`` (routing distributions), ``routing`` (routers,
top-k sampling and inclusion probabilities), ``traffic`` (rank-to-rank bytes).
"""
