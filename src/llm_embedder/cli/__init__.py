"""The ``llm-embedder`` command line: one module per sub-command, each with ``register(subparsers)``."""
