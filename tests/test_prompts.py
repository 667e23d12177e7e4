"""The prompt layer: rendering from the task table, budgets with or without a tokenizer, and that reward scoring and
evaluation both follow a ``--tasks`` edit of a template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llm_embedder.data.records import Record
from llm_embedder.errors import UserError
from llm_embedder.evaluation.downstream import perplexity as perplexity_module
from llm_embedder.evaluation.downstream import qa as qa_module
from llm_embedder.evaluation.downstream.base import DownstreamSettings, RetrievedKey
from llm_embedder.evaluation.downstream.chat import ChatEvaluator
from llm_embedder.evaluation.downstream.qa import QAEvaluator
from llm_embedder.lm.loading import resolve_lm
from llm_embedder.prompts import (
    DEFAULT_MAX_KEY_TOKENS,
    RewardPromptBuilder,
    TokenBudget,
    render_prompt,
    without_keys,
)
from llm_embedder.tasks.registry import TASKS, builtin_registry


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_lm(None))


def words(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------------------------------------ rendering
def test_qa_prompt_is_the_task_tables_template_with_keys_joined():
    qa = TASKS.get("qa")
    prompt = render_prompt(
        qa, " Who wrote Hamlet? ", ["Hamlet is a play.", " By Shakespeare. "], answer=" Shakespeare "
    )
    assert prompt.context == (
        "Knowledge: Hamlet is a play.\nBy Shakespeare.\n\nQuestion: Who wrote Hamlet?\n\nAnswer: "
    )
    assert prompt.answer == "Shakespeare" and prompt.text[prompt.answer_start :] == "Shakespeare"
    assert prompt.kept == (0, 1)
    # no key: the Knowledge block is left out, not left empty
    assert render_prompt(qa, "Who?", []).context == "Question: Who?\n\nAnswer: "


def test_without_keys_drops_a_leading_key_block_only():
    assert without_keys("Knowledge: {key}\n\nQuestion: {query}\n\nAnswer: {answer}") == (
        "Question: {query}\n\nAnswer: {answer}"
    )
    assert without_keys("{key}\nSpeaker 1: {query}\nSpeaker 2: {answer}") == "Speaker 1: {query}\nSpeaker 2: {answer}"
    assert without_keys("Q: {query} K: {key} A: {answer}") == "Q: {query} K: {key} A: {answer}"


def test_key_orders_of_the_builtin_tasks():
    keys = [RetrievedKey("turn two", 2), RetrievedKey("turn zero", 0), RetrievedKey("turn one", 1)]
    chat = render_prompt(TASKS.get("chat"), "hi", keys, answer="hello")
    assert chat.context == "turn zero\nturn one\nturn two\nSpeaker 1: hi\nSpeaker 2: "
    assert chat.kept == (1, 2, 0)
    icl = render_prompt(TASKS.get("icl"), "query", ["best", "second", "third"])
    assert icl.context == "third\nsecond\nbest\nquery\n"  # the most relevant demonstration nearest the query


def test_budget_with_a_count_function_and_no_tokenizer():
    """What the server does: no LM loaded, a token counter for the LLM that will read the prompt."""
    qa = TASKS.get("qa")
    keys = ["one two three four five", "six seven eight nine ten " * 10, "eleven"]
    fixed = words("Knowledge: \n\nQuestion: q\n\nAnswer:")  # 3 "words"
    prompt = render_prompt(qa, "q", keys, count_tokens=words, max_tokens=fixed + 4 + 5 + 1 + 20)
    assert prompt.kept == (0, 1)  # key 1 cut to the 20 words left, key 2 (less relevant) dropped
    kept_second = prompt.context.split("\n")[1]
    assert words(kept_second) == 20 and kept_second.startswith("six seven")
    assert TokenBudget(count=words).truncate("a b c d e", 2, "end") == "d e"
    with pytest.raises(ValueError, match="exactly one of tokenizer or count_tokens"):
        render_prompt(qa, "q", keys, max_tokens=50)


def test_templates_go_through_the_safe_renderer_only():
    tasks = builtin_registry()
    tasks.update_from_mapping({"qa": {"reward": {"template": "{key.__class__} {query} {answer}"}}}, source="t.yaml")
    with pytest.raises(UserError, match="invalid template field"):
        render_prompt(tasks.get("qa"), "q", ["k"])
    with pytest.raises(UserError, match="has no prompt template"):
        render_prompt(TASKS.get("tool"), "q", ["k"])


# ------------------------------------------------------------------------------------------------ reward budget
def test_reward_keys_are_cut_to_512_llm_tokens_by_default(tokenizer):
    """The reference's key budget (``key_max_length=512`` in run_lm_score.py)."""
    assert DEFAULT_MAX_KEY_TOKENS == 512
    builder = RewardPromptBuilder(tokenizer, TASKS.get("qa"))
    key = " ".join(f"w{i}" for i in range(800))
    budget = TokenBudget(tokenizer)
    assert budget.length(key) > 600
    cut = builder.truncate_key(key)
    assert budget.length(cut) == 512 and key.startswith(cut)
    record = Record(query="q", pos=[key], answers=["a"])
    context = tokenizer.decode(builder.build(record).flat[0].context_ids)
    assert context.startswith("Knowledge: " + cut.strip() + "\n\nQuestion: q")


def test_every_front_door_scores_with_the_512_token_key_budget():
    import argparse
    import inspect

    from llm_embedder.cli import score as score_cli
    from llm_embedder.pipeline.config import ScoreConfig
    from llm_embedder.reward import RewardScorer

    parser = argparse.ArgumentParser()
    score_cli.register(parser.add_subparsers())
    assert parser.parse_args(["score", "in.jsonl", "-o", "out.jsonl"]).max_key_tokens == 512
    assert inspect.signature(RewardScorer).parameters["max_key_tokens"].default == 512
    assert ScoreConfig().max_key_tokens == 512


# ------------------------------------------------------------------------------------------------ --tasks edits
def test_a_tasks_edit_changes_reward_and_evaluation_prompts(tokenizer, tmp_path, monkeypatch):
    """One template in the task table drives the reward and the downstream evaluation (no copy in evaluation/)."""
    task_file = tmp_path / "tasks.yaml"
    task_file.write_text(
        "qa:\n  reward:\n    template: \"Context: {key}\\nQ: {query}\\nA: {answer}\"\n    key_separator: ' | '\n"
        'chat:\n  reward:\n    template: "{key}\\nUser: {query}\\nBot: {answer}"\n'
    )
    tasks = builtin_registry()
    tasks.load_file(task_file)
    record = Record(query="Who?", pos=["First passage."], neg=["Second passage."], answers=["Me"])

    builder = RewardPromptBuilder(tokenizer, tasks.get("qa"))
    request = builder.build(record).flat[0]
    assert tokenizer.decode(request.context_ids + request.target_ids) == "Context: First passage.\nQ: Who?\nA: Me"

    class FakeLM:
        def __init__(self) -> None:
            self.tokenizer = tokenizer
            self.model = None

    captured: list = []

    def fake_score(lm, requests, settings, desc):
        captured.extend(requests)
        return [-1.0] * len(requests), [1] * len(requests)

    monkeypatch.setattr(qa_module, "score", fake_score)
    monkeypatch.setattr(qa_module, "generate_greedy", lambda lm, prompts, *a, **k: ["Me"] * len(prompts))
    settings = DownstreamSettings(show_progress=False)
    keys = [RetrievedKey("First passage.", 0), RetrievedKey("Second passage.", 1)]
    QAEvaluator(tasks.get("qa"), settings).evaluate([record], [keys], FakeLM())
    text = tokenizer.decode(captured[0].context_ids + captured[0].target_ids)
    assert text == "Context: First passage. | Second passage.\nQ: Who?\nA: Me"

    # chat goes through the perplexity scenarios' shared path
    captured.clear()
    monkeypatch.setattr(perplexity_module, "score", fake_score)
    turn = Record(query="hi", history=["Speaker 1: a\nSpeaker 2: b"], answers=["hello"])
    ChatEvaluator(tasks.get("chat"), settings).evaluate([turn], [[RetrievedKey(turn.history[0], 0)]], FakeLM())
    text = tokenizer.decode(captured[0].context_ids + captured[0].target_ids)
    assert text == "Speaker 1: a\nSpeaker 2: b\nUser: hi\nBot: hello"


def test_docstring_example():
    import doctest

    from llm_embedder.prompts import render

    result = doctest.testmod(render, verbose=False)
    assert result.attempted > 0 and result.failed == 0
