"""The prompt layer: a task's prompt rendered from the task table, for reward scoring, evaluation and serving.

* :func:`render_prompt` - template + query + retrieved keys (fitted to a token budget) -> :class:`RenderedPrompt`;
  usable without an LM (a tokenizer or a token-count function is enough).
* :class:`RewardPromptBuilder` - a record's scoring requests for the LLM reward (one prompt per candidate).
* :class:`TokenBudget` - counting and cutting text in an LLM's tokens.

No prompt text lives outside the task table (``tasks/builtin.yaml``, or a user's ``--tasks`` file).
"""

from llm_embedder.prompts.budget import TokenBudget
from llm_embedder.prompts.render import RenderedPrompt, RetrievedKey, fit_keys, prompt_template, render_prompt
from llm_embedder.prompts.reward import DEFAULT_MAX_KEY_TOKENS, RecordPrompts, RewardPromptBuilder, check_record
from llm_embedder.prompts.template import split_template, without_keys

__all__ = [
    "DEFAULT_MAX_KEY_TOKENS",
    "RecordPrompts",
    "RenderedPrompt",
    "RetrievedKey",
    "RewardPromptBuilder",
    "TokenBudget",
    "check_record",
    "fit_keys",
    "prompt_template",
    "render_prompt",
    "split_template",
    "without_keys",
]
