"""Builders that turn users' own raw data into records (chat dialogues, lrlm texts, icl pools, tool specs, ...).

Each builder module exposes ``register(sub)`` adding a ``llm-embedder build <name>`` sub-command; the modules are
listed in :data:`BUILDERS`.
"""

#: builder modules (``llm_embedder.builders.<name>``); a missing module is skipped
BUILDERS = ("lrlm", "chat", "icl", "tool", "negatives")
