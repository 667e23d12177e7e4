"""Builders that turn users' own raw data into records (chat dialogues, lrlm texts, icl pools, tool specs, ...).

Each builder is a typed function (``build_chat``, ``build_icl``, ``build_lrlm``, ``build_tool``, ``build_beir``,
``mine_negatives``); the ``llm-embedder build <name>`` commands that parse arguments for them live in
:mod:`llm_embedder.cli.build`, so the library never parses a command line.
"""

#: builder modules (``llm_embedder.builders.<name>``), in the order ``llm-embedder build --help`` lists them
BUILDERS = ("lrlm", "chat", "icl", "tool", "beir", "negatives")
