"""Evaluation: IR metrics (``metrics``), downstream LLM scenarios, orchestration and reports.

Kept free of imports so ``import llm_embedder.evaluation.metrics`` stays light; import the submodules directly.
"""
