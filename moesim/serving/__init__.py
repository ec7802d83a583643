"""Serving under load: a request stream through an iteration-level scheduler (``moesim simulate``).

stream.py   request streams: arrivals (Poisson, gamma) and length distributions, generated and seeded
trace.py    request traces from CSV or JSON lines (the only module here that reads files)
costs.py    the one adapter to the step, memory and communication models (iteration time, KV capacity, KV transfer)
engine.py   the scheduler of one engine instance (continuous batching, chunked prefill, paged KV, preemption)
api.py      deployments (aggregated or prefill/decode pools), metrics, rate sweeps, saturation; ``simulate``
"""
