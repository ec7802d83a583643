"""The ``moesim`` command line: one module per command, rendering under ``render/``."""
