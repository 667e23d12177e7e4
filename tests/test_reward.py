"""LLM-feedback rewards: prompts per task kind, exact scores, the `score` command, resume after kill -9."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llm_embedder.cli.main import main
from llm_embedder.data.records import Record, load_records
from llm_embedder.errors import UserError
from llm_embedder.prompts import RewardPromptBuilder, split_template
from llm_embedder.reward import RewardScorer, score_file
from llm_embedder.reward.distributed import DistributedContext
from llm_embedder.tasks.registry import get_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llm_embedder.lm import resolve_lm

    return AutoTokenizer.from_pretrained(resolve_lm("smollm2"))


def tiny_lm(tokenizer, hidden: int = 32, layers: int = 2, max_positions: int = 4096):
    """Randomly initialised Llama with the SmolLM2 vocabulary: fast, and exactness does not need quality."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_lm(tokenizer)


@pytest.fixture(scope="module")
def lm_folder(tokenizer, tmp_path_factory):
    """A saved tiny LM (for the CLI, which loads by path)."""
    folder = tmp_path_factory.mktemp("tiny-lm")
    tiny_lm(tokenizer, hidden=64, layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def naive_prompt(tokenizer, task: str, key: str, query: str, answer: str) -> tuple[list[int], list[int]]:
    """The reference's prompts (method.md section 3) written out by hand, one (candidate, answer) at a time."""
    key, query, answer = key.strip(), query.strip(), answer.strip()
    if task in ("qa", "convsearch"):
        return ids(tokenizer, f"Knowledge: {key}\n\nQuestion: {query}\n\nAnswer:"), ids(tokenizer, " " + answer)
    if task == "icl":
        return ids(tokenizer, f"{key}\n{query}\n"), ids(tokenizer, answer)
    if task == "chat":
        return ids(tokenizer, f"{key}\nSpeaker 1: {query}\nSpeaker 2:"), ids(tokenizer, " " + answer)
    raise AssertionError(task)


def naive_reward(model, context: list[int], target: list[int]) -> float:
    sequence = torch.tensor([context + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(sequence).logits[0].float(), dim=-1)
    values = [logprobs[p - 1, sequence[0, p]].item() for p in range(len(context), sequence.shape[1])]
    return sum(values) / len(values)


def sample_records(data_dir: Path, task: str, n: int = 2, candidates: int = 3) -> list[Record]:
    # the toy icl file has no answers; the development files do
    source = {"lrlm": "tasks/lrlm/dev.jsonl", "qa": "tasks/qa/dev.jsonl", "icl": "tasks/icl/dev.jsonl"}.get(
        task, f"toy/{task}.jsonl"
    )
    records = load_records(data_dir / source, task=task)[:n]
    for record in records:
        if record.uses_history:
            record.history = record.history[:candidates]
        else:
            record.pos, record.neg = record.pos[:1], record.neg[: candidates - len(record.pos[:1])]
            record.pos_index = record.neg_index = None
        record.teacher_scores = None
    return records


@pytest.mark.parametrize("task", ["qa", "convsearch", "icl", "chat", "lrlm"])
def test_rewards_equal_one_candidate_at_a_time(task, data_dir, tokenizer, model):
    records = sample_records(data_dir, task)
    scorer = RewardScorer(model, tokenizer, task=task, max_key_tokens=None, token_budget=2048, max_batch_size=8)
    scores = scorer.score(records)
    for record, record_scores in zip(records, scores, strict=True):
        assert len(record_scores) == len(record.candidates)
        for candidate, score in zip(record.candidates, record_scores, strict=True):
            per_answer = []
            for answer in record.answers:
                if task == "lrlm":  # token level: candidate chunk, query chunk | next chunk
                    context, target = ids(tokenizer, candidate) + ids(tokenizer, record.query), ids(tokenizer, answer)
                else:
                    context, target = naive_prompt(tokenizer, task, candidate, record.query, answer)
                per_answer.append(naive_reward(model, context, target))
            assert abs(score - sum(per_answer) / len(per_answer)) < 1e-4


def test_multiple_answers_average_and_sum_reduction(data_dir, tokenizer, model):
    record = next(r for r in sample_records(data_dir, "qa", n=5) if len(r.answers) > 1)
    scorer = RewardScorer(model, tokenizer, task="qa")
    both = scorer.score([record])[0]
    singles = []
    for answer in record.answers:
        one = copy.deepcopy(record)
        one.answers = [answer]
        singles.append(scorer.score([one])[0])
    for c, score in enumerate(both):
        assert abs(score - sum(s[c] for s in singles) / len(singles)) < 1e-6
    # sum = mean x number of answer tokens
    one = copy.deepcopy(record)
    one.answers = record.answers[:1]
    summed = RewardScorer(model, tokenizer, task="qa", reduction="sum").score([one])[0]
    n_tokens = len(scorer.prepare(one).requests[0][0].target_ids)
    assert abs(summed[0] - singles[0][0] * n_tokens) < 1e-4


def test_concatenated_ids_match_whole_template_tokenisation(data_dir, tokenizer):
    """Separate context/answer tokenising equals tokenising the filled template, up to seam effects (measured)."""
    same = total = 0
    for task in ("qa", "chat", "icl"):
        builder = RewardPromptBuilder(tokenizer, get_task(task), max_key_tokens=None)
        template = get_task(task).reward.template
        for record in sample_records(data_dir, task, n=8, candidates=4):
            prompts = builder.build(record)
            for candidate, per_candidate in zip(record.candidates, prompts.requests, strict=True):
                for answer, request in zip(record.answers, per_candidate, strict=True):
                    text = template.format(key=candidate.strip(), query=record.query.strip(), answer=answer.strip())
                    same += request.context_ids + request.target_ids == ids(tokenizer, text)
                    total += 1
    assert same / total >= 0.9, f"only {same}/{total} prompts tokenise like the whole template"


def test_key_truncation_keeps_the_beginning(tokenizer):
    builder = RewardPromptBuilder(tokenizer, get_task("qa"), max_key_tokens=8)
    key = "The quick brown fox jumps over the lazy dog and keeps on running far away"
    cut = builder.truncate_key(key)
    assert key.startswith(cut) and len(ids(tokenizer, cut)) == 8
    assert builder.truncate_key("short key") == "short key"


def test_templates_and_tasks_without_reward(tokenizer, model):
    assert split_template("Q: {query} K: {key} A: {answer} end") == ("Q: {query} K: {key} A: ", " end")
    with pytest.raises(UserError, match="exactly once"):
        split_template("Knowledge: {key} {query}")
    with pytest.raises(UserError, match="no LLM reward"):
        RewardScorer(model, tokenizer, task="tool")
    with pytest.raises(UserError, match="does not apply"):
        RewardScorer(model, tokenizer, task="lrlm", template="{key} {query} {answer}")
    record = Record(query="capital of France?", pos=["Paris is the capital of France."], answers=["Paris"], task="qa")
    custom = RewardScorer(model, tokenizer, template="Q: {query}\nK: {key}\nA: {answer}").score([record])[0][0]
    context = ids(tokenizer, "Q: capital of France?\nK: Paris is the capital of France.\nA:")
    assert abs(custom - naive_reward(model, context, ids(tokenizer, " Paris"))) < 1e-4


@pytest.mark.slow
def test_gold_passage_outscores_unrelated_passages_with_the_bundled_lm(data_dir):
    """Real SmolLM2: a question's gold passage makes its answer likelier than other questions' passages."""
    from llm_embedder.lm import load_causal_lm

    lm, tok = load_causal_lm("smollm2", device="cpu")
    source = load_records(data_dir / "toy/qa.jsonl", task="qa")
    records = []
    for i, record in enumerate(source):
        unrelated = [source[(i + k) % len(source)].pos[0] for k in (1, 4)]
        records.append(Record(query=record.query, pos=record.pos[:1], neg=unrelated, answers=record.answers, task="qa"))
    scores = RewardScorer(lm, tok, task="qa", max_key_tokens=128).score(records)
    wins = sum(s[0] > max(s[1:]) for s in scores)
    assert wins >= 6, f"gold passage ranked first for only {wins}/{len(records)} questions"


# ------------------------------------------------------------------------------------------------------ CLI


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"query": "capital of France?", "pos": ["Paris is in France."], "neg": ["Cats purr."], "answers": ["Paris"]}


@pytest.mark.parametrize(
    ("row", "args", "expected"),
    [
        ({**GOOD, "answers": None}, ["--task", "qa"], "in.jsonl:2: field 'answers': missing"),
        ({**GOOD, "pos": [], "neg": []}, ["--task", "qa"], "in.jsonl:2: field 'pos': no candidates to score"),
        ({**GOOD, "pos": "x"}, ["--task", "qa"], "in.jsonl:2: field 'pos': must be a list of strings"),
        (GOOD, [], "in.jsonl:1: field 'task': missing"),
        (GOOD, ["--task", "tool"], "task 'tool' has no LLM reward"),
        (GOOD, ["--task", "nope"], "unknown task 'nope'"),
        (GOOD, ["--task", "qa", "--template", "{key} {query}"], "must contain {answer} exactly once"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, row, args, expected):
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD, row])
    code = main(["score", str(source), "-o", str(tmp_path / "out.jsonl"), "--lm", "/nonexistent", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out.jsonl").exists()


def test_over_long_prompt_and_skip_invalid(tmp_path, capsys, lm_folder):
    long = {**GOOD, "neg": ["word " * 400]}
    source = write_jsonl(tmp_path / "in.jsonl", [GOOD, long, GOOD])
    out = tmp_path / "out.jsonl"
    base = ["score", str(source), "-o", str(out), "--lm", str(lm_folder), "--task", "qa", "--max-length", "128"]
    assert main([*base, "--no-progress"]) == 2
    # (transformers draws its own weight-loading bar above; our error is one line)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("llm-embedder")]
    assert len(err) == 1 and "in.jsonl:2: field 'neg': prompt of candidate 1 is" in err[0], err
    assert main([*base, "--no-progress", "--skip-invalid"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 invalid records (first: " in err and "in.jsonl:2" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["teacher_scores"]) == 2 for r in rows)


def test_split_ranks_merge_to_the_single_process_file(tmp_path, data_dir, tokenizer, model):
    """Two ranks (run one after the other here) each score every other chunk; rank 0 merges in input order."""
    source = write_jsonl(tmp_path / "in.jsonl", [r.to_dict() for r in sample_records(data_dir, "chat", n=7)])
    scorer = RewardScorer(model, tokenizer, task="chat")
    single = score_file(source, tmp_path / "single.jsonl", scorer, chunk_size=2, show_progress=False)
    assert single.written == 7
    for rank in (1, 0):
        split = score_file(
            source,
            tmp_path / "split.jsonl",
            scorer,
            chunk_size=2,
            show_progress=False,
            dist=DistributedContext(rank=rank, world_size=2),
        )
    assert split.written == 7 and split.candidates == single.candidates
    assert (tmp_path / "split.jsonl").read_bytes() == (tmp_path / "single.jsonl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "single.jsonl", "split.jsonl"]


def _score_command(source: Path, out: Path, lm_folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "llm_embedder.cli.main", "score", str(source), "-o", str(out),
        "--task", "qa", "--lm", str(lm_folder), "--chunk-size", "1", "--no-progress", *extra,
    ]  # fmt: skip


def test_resume_after_kill_gives_identical_bytes(tmp_path, data_dir, lm_folder, capsys):
    rows = [json.loads(line) for line in (data_dir / "tasks/qa/dev.jsonl").read_text().splitlines()[:12]]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "uninterrupted.jsonl"
    subprocess.run(_score_command(source, reference, lm_folder), check=True, env=env, capture_output=True)

    out = tmp_path / "out.jsonl"
    state = out.with_name("out.jsonl.partial.state.json")
    process = subprocess.Popen(_score_command(source, out, lm_folder), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(state.read_text())["chunks_done"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists(), "the run finished before it could be killed"
    partial = out.with_name("out.jsonl.partial")
    with open(partial, "ab") as handle:  # a torn line, as if killed in the middle of a write
        handle.write(b'{"query": "torn')

    # other options than the partial file was made with: refused, one line, exit 2
    assert main(_score_command(source, out, lm_folder, "--reduction", "sum")[3:]) == 2
    assert "was made from another input or with other options" in capsys.readouterr().err

    resumed = subprocess.run(_score_command(source, out, lm_folder), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed after" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists() and not state.exists()
