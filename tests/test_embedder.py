"""LLMEmbedder: encoding per task, saving for sentence-transformers / FlagEmbedding, hub errors, fast paths.

Equivalence tests, as in sentence-transformers' own suite: our vectors must equal what the plain libraries compute
from the same weights and instruction, because users will mix them (index with one, query with the other).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flag_helpers import load_flag_model

from llm_embedder import LLMEmbedder, UserError
from llm_embedder.model import loading
from llm_embedder.model.embedder import CONFIG_NAME
from llm_embedder.model.truncation import input_overhead, keep_tail
from llm_embedder.tasks.registry import builtin_registry
from llm_embedder.tasks.spec import TaskSpec

TEXTS = [
    "where does the saskatchewan river start and end",
    "who wrote the song the times they are a changin",
    "x",
    "The North Saskatchewan River is a glacier-fed river that flows from the Canadian Rockies continental divide "
    "east to central Saskatchewan, where it joins with another major river to make up the Saskatchewan River. "
    "Its water flows eventually into the Hudson Bay. " * 3,
    "Speaker 1: I need some advice on where to go on vacation, have you been anywhere lately?\nSpeaker 2: I have.",
]


@pytest.fixture(scope="module")
def embedder():
    """The bundled MiniLM with the task instructions forced on: this file tests the instruction machinery itself
    (the untrained default encodes plain text; see test_default_encodes_plain_text_*)."""
    return LLMEmbedder(device="cpu", use_instructions=True)


@pytest.fixture(scope="module")
def cls_embedder():
    """The bundled MiniLM with CLS pooling (how llm-embedder style models pool), instructions on."""
    return LLMEmbedder(device="cpu", pooling="cls", use_instructions=True)


@pytest.fixture(scope="module")
def plain_default():
    """``LLMEmbedder()`` exactly as a user gets it."""
    return LLMEmbedder(device="cpu")


def test_default_encodes_plain_text_like_sentence_transformers(plain_default):
    """The bundled MiniLM was never trained with the paper's instructions and loses quality with them, so the
    default encodes the text alone: the same vector plain sentence-transformers gives without a prompt."""
    from sentence_transformers import SentenceTransformer

    from llm_embedder.model.loading import default_encoder_path

    st = SentenceTransformer(default_encoder_path(), device="cpu")
    chat = ["Speaker 1: what did we say about the trip to Lisbon?"]
    assert plain_default.use_instructions is False
    assert plain_default.instruction("chat", "query") == ""
    np.testing.assert_allclose(
        plain_default.encode_queries(chat, task="chat"), st.encode(chat, normalize_embeddings=True), atol=1e-6
    )
    np.testing.assert_allclose(
        plain_default.encode_keys(TEXTS[:2], task="tool"), st.encode(TEXTS[:2], normalize_embeddings=True), atol=1e-6
    )
    assert "instructions=off" in plain_default.fingerprint


def test_a_folder_saved_with_instructions_encodes_with_them(embedder, plain_default, tmp_path):
    """A folder whose llm_embedder.json records instruction training (what `train` writes) applies them by default;
    one saved from the untrained default does not; the caller can always force either way."""
    trained = LLMEmbedder(embedder.save(tmp_path / "trained"), device="cpu")
    chat = ["Speaker 1: what did we say about the trip to Lisbon?"]
    instructed = embedder.model.encode([embedder.task("chat").query_instruction + chat[0]], normalize_embeddings=True)
    assert trained.use_instructions is True
    np.testing.assert_allclose(trained.encode_queries(chat, task="chat"), instructed, atol=1e-6)
    untrained = LLMEmbedder(plain_default.save(tmp_path / "untrained"), device="cpu")
    assert untrained.use_instructions is False
    forced = LLMEmbedder(plain_default.save(tmp_path / "forced"), device="cpu", use_instructions=True)
    np.testing.assert_allclose(forced.encode_queries(chat, task="chat"), instructed, atol=1e-6)


def test_known_instruction_trained_hub_models_use_them():
    from llm_embedder.model.embedder import INSTRUCTION_TRAINED_MODELS

    assert "BAAI/llm-embedder" in INSTRUCTION_TRAINED_MODELS


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---------------------------------------------------------------------- encoding
def test_encode_shape_dtype_norm_and_order(embedder):
    vectors = embedder.encode_queries(TEXTS, task="qa")
    assert vectors.shape == (len(TEXTS), embedder.dim) and vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # batching (length-sorted inside) must not change or reorder anything
    one_by_one = np.concatenate([embedder.encode_queries([t], task="qa", batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    single = embedder.encode_queries(TEXTS[0], task="qa")
    assert single.shape == (1, embedder.dim)
    assert embedder.encode_keys([], task="qa").shape == (0, embedder.dim)


def test_instructions_by_task_and_side(embedder):
    spec = embedder.task("tool")
    raw = embedder.model.encode([spec.query_instruction + TEXTS[0]], normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode_queries(TEXTS[:1], task="tool"), raw, atol=1e-6)
    raw_key = embedder.model.encode([spec.key_instruction + TEXTS[0]], normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode_keys(TEXTS[:1], task="tool"), raw_key, atol=1e-6)
    vectors = {task: embedder.encode_queries(TEXTS[:1], task=task) for task in embedder.tasks}
    assert len({v.tobytes() for v in vectors.values()}) == 6, "each task must have its own instruction"
    assert embedder.instruction("qa", "query") == "Represent this query for retrieving relevant documents: "
    assert embedder.instruction("chat", "key") == "Embed this historical dialogue for retrieval: "


def test_without_instructions_is_the_plain_model(embedder, monkeypatch):
    monkeypatch.setattr(embedder, "use_instructions", False)
    plain = embedder.model.encode(TEXTS[:2], normalize_embeddings=True)
    np.testing.assert_allclose(embedder.encode_queries(TEXTS[:2], task="qa"), plain, atol=1e-6)


def test_max_length_truncates_per_side(embedder, monkeypatch):
    short = embedder.encode_keys([TEXTS[3]], task="qa", max_length=12)
    longer_tail = embedder.encode_keys([TEXTS[3] + " and a different ending"], task="qa", max_length=12)
    np.testing.assert_allclose(short, longer_tail, atol=1e-6)
    assert _cos(short, embedder.encode_keys([TEXTS[3]], task="qa"))[0] < 0.999
    # the per-side default applies when no max_length is given
    explicit = embedder.encode_queries([TEXTS[3]], task="qa", max_length=12)
    monkeypatch.setattr(embedder, "query_max_length", 12)
    np.testing.assert_allclose(embedder.encode_queries([TEXTS[3]], task="qa"), explicit, atol=1e-6)
    assert embedder.max_length("query") == 12 and embedder.max_length("key") == embedder.key_max_length != 12


def test_left_truncation_keeps_the_end_of_the_query_and_the_whole_instruction(embedder):
    """convsearch queries are whole conversations that end with the question: a long one keeps its last tokens."""
    assert embedder.task("convsearch").query_truncation == "left" and embedder.task("qa").query_truncation == "right"
    tokenizer = embedder.model.tokenizer
    instruction = embedder.instruction("convsearch", "query")
    conversation = TEXTS[3] + " Speaker 1: where does the north saskatchewan river end?"
    [fitted] = embedder.fit_texts([conversation], "convsearch", "query", 24)
    assert conversation.endswith(fitted) and len(fitted) < len(conversation)
    ids = tokenizer(instruction + fitted)["input_ids"]
    assert len(ids) == 24, "the instruction, the special tokens and the text's tail fill the budget exactly"
    prompt_ids = tokenizer(instruction, add_special_tokens=False)["input_ids"]
    text_ids = tokenizer(conversation, add_special_tokens=False)["input_ids"]
    kept = 24 - 2 - len(prompt_ids)
    assert ids == [tokenizer.cls_token_id, *prompt_ids, *text_ids[-kept:], tokenizer.sep_token_id]
    # what encode does: a different START of the conversation no longer matters, a different end does
    vec = embedder.encode_queries([conversation], task="convsearch", max_length=24)
    other_start = embedder.encode_queries(["Some other opening. " + conversation], task="convsearch", max_length=24)
    np.testing.assert_allclose(vec, other_start, atol=1e-6)
    other_end = embedder.encode_queries([conversation + " And the source?"], task="convsearch", max_length=24)
    assert _cos(vec, other_end)[0] < 0.999
    raw = embedder.model.encode([instruction + fitted], normalize_embeddings=True)
    np.testing.assert_allclose(vec, raw, atol=1e-6)
    # keys, right-truncated tasks and short queries are left alone
    assert embedder.fit_texts([conversation], "convsearch", "key", 24) == [conversation]
    assert embedder.fit_texts([conversation], "qa", "query", 24) == [conversation]
    assert embedder.fit_texts(TEXTS[:1], "convsearch", "query", 24) == TEXTS[:1]


@pytest.mark.parametrize("tasks", [("convsearch", "convsearch"), ("convsearch", "qa")])
def test_training_collator_cuts_queries_as_encode_does(embedder, tasks):
    """Training inputs = retrieval inputs, for a homogeneous and for a mixed batch."""
    import torch

    from llm_embedder.training.collator import GroupCollator

    long_query = TEXTS[3] + " Speaker 1: where does it end?"
    items = [
        {"dataset": t, "task": t, "query": long_query, "keys": TEXTS[:2], "teacher_scores": None, "id": str(i)}
        for i, t in enumerate(tasks)
    ]
    collator = GroupCollator(
        embedder.model.preprocess,
        instruction=embedder.instruction,
        task_names=["convsearch", "qa"],
        query_max_length=24,
        key_max_length=24,
        fit_texts=embedder.fit_texts,
    )
    batch = collator(items)
    rows = batch["query_input_ids"][batch["label"]["query_order"]]
    for row, task in zip(rows, tasks, strict=True):
        [text] = embedder.fit_texts([long_query], task, "query", 24)
        expected = embedder.model.preprocess([text], prompt=embedder.instruction(task, "query"), max_length=24)
        ids = expected["input_ids"][0]
        assert torch.equal(row[: len(ids)], ids)
    if tasks == ("convsearch", "qa"):
        assert not torch.equal(rows[0], rows[1]), "qa keeps the start, convsearch the end"


def test_keep_tail_edges(embedder):
    tokenizer = embedder.model.tokenizer
    assert keep_tail(["a b c d", "", "e"], tokenizer, 2) == ["c d", "", "e"]
    assert keep_tail(["a b c d"], tokenizer, 0) == [""]
    # a cut inside a word moves forward to the next word, so the kept text tokenises as the full text's tail
    word = "glaciologically"  # g ##la ##cio ##logical ##ly
    pieces = len(tokenizer(word, add_special_tokens=False)["input_ids"])
    assert pieces == 5
    text = f"alpha {word} beta {word}, gamma"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    [kept] = keep_tail([text], tokenizer, pieces + 1)  # the last 6 tokens start at ##la of the second word
    assert kept == "gamma"
    kept_ids = tokenizer(kept, add_special_tokens=False)["input_ids"]
    assert kept_ids == ids[len(ids) - len(kept_ids) :]
    assert keep_tail([word], tokenizer, 2) != [word], "one word longer than the budget is cut inside"
    assert keep_tail([], tokenizer, 3) == []
    assert input_overhead(tokenizer, None) == 2 and input_overhead(tokenizer, "one two three") == 5  # [CLS] [SEP]
    slow = type("SlowTokenizer", (), {"is_fast": False})()
    with pytest.raises(UserError, match="needs a fast tokenizer"):
        keep_tail(["a b"], slow, 1)


def test_a_task_with_a_bad_truncation_side_is_one_line():
    with pytest.raises(UserError, match="field 'query_truncation' is 'middle'"):
        TaskSpec.from_dict("mine", {"query_instruction": "q: ", "key_instruction": "k: ", "query_truncation": "middle"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "nope"}, "unknown task 'nope'"),
        ({"side": "middle"}, "unknown side"),
        ({"max_length": 0}, "max length 0 is out of range"),
        ({"max_length": 100_000}, "use 1..512"),
        ({"batch_size": 0}, "batch size 0"),
    ],
)
def test_bad_arguments_are_user_errors(embedder, kwargs, message):
    with pytest.raises(UserError, match=message):
        embedder.encode(TEXTS[:1], **kwargs)


def test_non_string_input_is_a_user_error(embedder):
    with pytest.raises(UserError, match="input 1 is a int"):
        embedder.encode_queries(["ok", 3], task="qa")  # type: ignore[list-item]


def test_progress_bar_for_long_inputs(embedder, monkeypatch, capsys):
    import llm_embedder.model.embedder as module

    monkeypatch.setattr(module, "PROGRESS_THRESHOLD", 3)
    # captured stderr is not a terminal: sentence-transformers' per-batch bar would be a line per batch in a log
    embedder.encode_keys(TEXTS[:3], task="qa")
    assert "Batches" not in capsys.readouterr().err
    monkeypatch.setenv("LLM_EMBEDDER_PROGRESS", "tty")  # as on a terminal
    embedder.encode_keys(TEXTS[:3], task="qa")
    assert "Batches" in capsys.readouterr().err
    embedder.encode_keys(TEXTS[:2], task="qa")
    assert "Batches" not in capsys.readouterr().err


def test_bf16_matches_fp32(embedder):
    bf16 = LLMEmbedder(device="cpu", dtype="bf16", use_instructions=True)
    vectors = bf16.encode_keys(TEXTS, task="qa")
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _cos(vectors, embedder.encode_keys(TEXTS, task="qa")).min() > 0.99


def test_pooling_follows_the_model_and_can_be_overridden(embedder, cls_embedder):
    assert embedder.model[1].pooling_mode == "mean"
    assert cls_embedder.model[1].pooling_mode == "cls"
    assert _cos(embedder.encode_queries(TEXTS[:2]), cls_embedder.encode_queries(TEXTS[:2])).max() < 0.99
    with pytest.raises(UserError, match="unknown pooling"):
        LLMEmbedder(device="cpu", pooling="median")


# ---------------------------------------------------------------------- saving: sentence-transformers / FlagEmbedding
@pytest.fixture(scope="module")
def saved_mean(embedder, tmp_path_factory):
    return embedder.save(tmp_path_factory.mktemp("saved") / "minilm-mean")


@pytest.fixture(scope="module")
def saved_cls(cls_embedder, tmp_path_factory):
    return cls_embedder.save(tmp_path_factory.mktemp("saved") / "minilm-cls")


@pytest.mark.parametrize(("fixture", "pooling"), [("saved_mean", "mean"), ("saved_cls", "cls")])
def test_saved_folder_matches_sentence_transformers_and_flagembedding(
    request, fixture, pooling, embedder, cls_embedder, monkeypatch
):
    from sentence_transformers import SentenceTransformer

    path = request.getfixturevalue(fixture)
    ours = embedder if pooling == "mean" else cls_embedder
    expected = ours.encode_queries(TEXTS, task="qa")
    config = json.loads((Path(path) / "config_sentence_transformers.json").read_text(encoding="utf-8"))
    assert config["prompts"]["qa_query"] == "Represent this query for retrieving relevant documents: "
    assert config["prompts"]["tool_key"] == "Transform this tool description for retrieval: "

    st = SentenceTransformer(path, device="cpu")
    got = st.encode(TEXTS, prompt_name="qa_query", normalize_embeddings=True)
    assert np.abs(got - expected).max() < 1e-5
    got_keys = st.encode(TEXTS, prompt_name="qa_key", normalize_embeddings=True)
    assert np.abs(got_keys - ours.encode_keys(TEXTS, task="qa")).max() < 1e-5

    flag_model = load_flag_model(monkeypatch)
    flag = flag_model(
        path,
        query_instruction_for_retrieval=ours.instruction("qa", "query"),
        pooling_method=pooling,
        use_fp16=False,
        devices="cpu",
        query_max_length=ours.query_max_length,
    )
    got = flag.encode_queries(TEXTS)
    assert np.abs(got - expected).max() < 1e-5


def test_loading_a_saved_folder_restores_tasks_and_settings(embedder, tmp_path, monkeypatch):
    monkeypatch.setattr(embedder, "tasks", embedder.tasks.copy())
    embedder.tasks.register(TaskSpec(name="code", query_instruction="Find code for: ", key_instruction="Code: "))
    monkeypatch.setattr(embedder, "key_max_length", 64)
    path = embedder.save(tmp_path / "with-code", model_card="# my model\n")
    assert (tmp_path / "with-code" / CONFIG_NAME).is_file()
    assert (tmp_path / "with-code" / "README.md").read_text() == "# my model\n"

    loaded = LLMEmbedder(path, device="cpu", tasks=builtin_registry())
    assert "code" in loaded.tasks and loaded.task("code").key_instruction == "Code: "
    assert loaded.key_max_length == 64 and loaded.query_max_length == embedder.query_max_length
    np.testing.assert_allclose(
        loaded.encode_keys(TEXTS[:2], task="code"), embedder.encode_keys(TEXTS[:2], task="code"), atol=1e-6
    )
    # the prompts alone (e.g. a folder edited by hand, without llm_embedder.json) also define tasks
    (tmp_path / "with-code" / CONFIG_NAME).unlink()
    assert "code" in LLMEmbedder(path, device="cpu", tasks=builtin_registry()).tasks


def test_tasks_registered_after_construction_are_usable_and_saved(embedder, tmp_path):
    from llm_embedder import register_task
    from llm_embedder.tasks.registry import TASKS

    saved = dict(TASKS._specs)
    try:
        register_task("late", "Late query: ", "Late key: ")
        expected = embedder.model.encode(["Late query: " + TEXTS[0]], normalize_embeddings=True)
        np.testing.assert_allclose(embedder.encode_queries(TEXTS[:1], task="late"), expected, atol=1e-6)
        assert embedder.prompts()["late_key"] == "Late key: "
    finally:
        TASKS._specs.clear()
        TASKS._specs.update(saved)
    # a registry given explicitly is the whole table
    own = LLMEmbedder(embedder.path, device="cpu", tasks=builtin_registry())
    with pytest.raises(UserError, match="unknown task 'late'"):
        own.instruction("late", "query")


def test_broken_saved_config_is_one_line(tmp_path, saved_mean):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(saved_mean, folder)
    (folder / CONFIG_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="cannot parse the saved llm-embedder config"):
        LLMEmbedder(folder, device="cpu")


# ---------------------------------------------------------------------- model sources
def _no_download(monkeypatch):
    """Fail the test if anything tries the network; the local cache is always empty."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fake_snapshot_download(repo_id, *, local_files_only=False, **kwargs):
        if local_files_only:
            raise LocalEntryNotFoundError(f"{repo_id} not cached")
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)


def test_hub_id_offline_mode_is_one_clear_line(monkeypatch):
    _no_download(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the local Hugging Face cache and offline mode is on") as info:
        LLMEmbedder("BAAI/llm-embedder", device="cpu")
    assert "\n" not in str(info.value)


def test_hub_id_without_network_is_one_clear_line(monkeypatch):
    _no_download(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError, match="Hugging Face Hub is not reachable") as info:
        LLMEmbedder("BAAI/llm-embedder", device="cpu")
    assert "\n" not in str(info.value) and "BAAI/llm-embedder" in str(info.value)


def test_missing_local_folder_and_default(tmp_path):
    with pytest.raises(UserError, match="not found"):
        LLMEmbedder(str(tmp_path / "nowhere" / "model"), device="cpu")
    assert loading.resolve_model_path(None) == loading.default_encoder_path()
    with pytest.raises(UserError, match="unknown backend"):
        LLMEmbedder(device="cpu", backend="tensorrt")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- several processes
@pytest.mark.slow
def test_multi_process_keeps_order(embedder):
    texts = [f"passage {i}: " + "word " * (i % 13) for i in range(24)]
    single = embedder.encode_keys(texts, task="tool")
    multi = embedder.encode_keys(texts, task="tool", devices=["cpu", "cpu"])
    assert multi.shape == single.shape and multi.dtype == np.float32
    np.testing.assert_allclose(multi, single, atol=1e-5)
    assert str(embedder.model.device) == "cpu"


# ---------------------------------------------------------------------- ONNX Runtime fast path
@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("LLM_EMBEDDER_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def onnx_embedder(onnx_cache):
    return LLMEmbedder(device="cpu", backend="onnx", use_instructions=True)


def test_onnx_fp32_matches_torch(embedder, onnx_embedder, onnx_cache):
    exported = list((onnx_cache / "onnx").glob("*-fp32-*/model.onnx"))
    assert len(exported) == 1
    for task, side in (("qa", "query"), ("qa", "key"), ("chat", "key")):
        expected = embedder.encode(TEXTS, task=task, side=side)
        got = onnx_embedder.encode(TEXTS, task=task, side=side, batch_size=2)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4
    truncated = onnx_embedder.encode_keys(TEXTS, task="qa", max_length=16)
    assert np.abs(truncated - embedder.encode_keys(TEXTS, task="qa", max_length=16)).max() < 1e-4
    tail = onnx_embedder.encode_queries(TEXTS, task="convsearch", max_length=16)  # left truncation
    assert np.abs(tail - embedder.encode_queries(TEXTS, task="convsearch", max_length=16)).max() < 1e-4


def test_onnx_int8_close_to_fp32(embedder, onnx_cache):
    int8 = LLMEmbedder(device="cpu", backend="onnx-int8", use_instructions=True)
    got = int8.encode_keys(TEXTS, task="qa")
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cos(got, embedder.encode_keys(TEXTS, task="qa")).min() > 0.98
    assert len(list((onnx_cache / "onnx").glob("*-int8-*/model.onnx"))) == 1


def test_onnx_uses_the_models_pooling_and_the_cache(cls_embedder, onnx_embedder, onnx_cache, monkeypatch):
    import torch

    def no_export(*args, **kwargs):
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    onnx_cls = LLMEmbedder(
        device="cpu", pooling="cls", backend="onnx", use_instructions=True
    )  # same weights: cached graph
    assert np.abs(onnx_cls.encode_queries(TEXTS) - cls_embedder.encode_queries(TEXTS)).max() < 1e-4
    assert len(list((onnx_cache / "onnx").glob("*-fp32-*"))) == 1


def test_onnx_cache_key_follows_weights_and_dtype(tmp_path):
    from llm_embedder.model.onnx_backend import cache_key

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0" * 10)
    first = cache_key(tmp_path, "fp32")
    assert cache_key(tmp_path, "fp32") == first and cache_key(tmp_path, "int8") != first
    os.utime(weights, ns=(1, 1))
    assert cache_key(tmp_path, "fp32") != first
    weights.unlink()
    with pytest.raises(UserError, match="no weight file"):
        cache_key(tmp_path, "fp32")


def test_ort_spinning_follows_the_environment(monkeypatch, onnx_embedder):
    from llm_embedder.model.onnx_backend import OnnxEncoder, default_spinning

    monkeypatch.delenv("LLM_EMBEDDER_ORT_SPIN", raising=False)
    assert default_spinning() is True
    monkeypatch.setenv("LLM_EMBEDDER_ORT_SPIN", "0")
    assert default_spinning() is False
    quiet = OnnxEncoder.from_embedder(onnx_embedder)
    assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("LLM_EMBEDDER_ORT_SPIN", "yes")
    with pytest.raises(UserError, match="LLM_EMBEDDER_ORT_SPIN='yes' must be 0 or 1"):
        default_spinning()


def test_token_budget_batches_cover_every_text_once():
    from llm_embedder.model.onnx_backend import _token_budget_batches

    lengths = np.array([5, 300, 40, 40, 7, 120, 1, 300, 64])
    order = np.argsort(-lengths, kind="stable")
    batches = list(_token_budget_batches(order, lengths, batch_size=4, max_tokens=256))
    assert np.array_equal(np.concatenate(batches), order)
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 256
    assert [len(b) for b in batches][:2] == [1, 1]  # a text longer than the budget still gets its own batch
