"""Reward from LLM feedback: teacher scores of candidates (method.md section 3).

The prompts (record -> (context, answer) token pairs per the task table) come from the prompt layer,
:mod:`llm_embedder.prompts`; ``scorer``: ``RewardScorer`` (mean or
sum log-probability of the answer); ``resumable``: scoring a file that survives ``kill -9``; ``distributed``:
several processes / GPUs under torchrun.
"""

from llm_embedder.prompts import DEFAULT_MAX_KEY_TOKENS, RecordPrompts, RewardPromptBuilder, check_record
from llm_embedder.reward.resumable import ScoreFileResult, score_file
from llm_embedder.reward.scorer import RewardScorer

__all__ = [
    "DEFAULT_MAX_KEY_TOKENS",
    "RecordPrompts",
    "RewardPromptBuilder",
    "RewardScorer",
    "ScoreFileResult",
    "check_record",
    "score_file",
]
