"""moesim's PyTorch reference runner (installed as ``moesim.runner``).

Real MoE layers (:mod:`.layers`), expert parallelism over torch.distributed
(:mod:`.ep`), a timing harness (:mod:`.timing`), the microbenchmarks that
calibration fits (:mod:`.microbench`), and the drivers behind
``moesim calibrate`` / ``validate`` / ``bench-layer`` (:mod:`.calibrate`,
:mod:`.cases`).

Importing any submodule imports torch; ``import moesim`` and the analytical
core never do. The fit math and the single-layer prediction live in
:mod:`moesim.calib` and run without torch.
"""

from __future__ import annotations

TORCH_REQUIREMENT = "torch==2.13.0"
INSTALL_HINT = f"pip install 'moesim[runner]' (it pins {TORCH_REQUIREMENT})"
