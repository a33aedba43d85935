"""Prompts, token ids and completion-only labels, with the real SmolLM2 tokenizer.

SmolLM2 pads with its end token (pad == eos == <|im_end|>), the setting in which masking pads by
token id would silently stop the model from learning to end its answers.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import CHAT_STYLES, make_tiny_llama
from datasets import Dataset, DatasetDict

from tunebook.config import DataConfig
from tunebook.errors import TemplateError
from tunebook.formatting import (
    IGNORE_INDEX,
    PLAIN_PROMPT_TEMPLATE,
    answer_text,
    build_prompt,
    check_labels,
    completion_collator,
    drop_overlong,
    encode_prompt,
    end_of_turn_id,
    length_stats,
    prompt_messages,
    show_trained_tokens,
    stop_token_ids,
    suggest_max_length,
    tokenize_dataset,
    tokenize_example,
    trained_segments,
)

INSTRUCTION = DataConfig(recipe="instruction")
CHAT = DataConfig(recipe="chat")
EXAMPLE = {"instruction": "What is the capital of France?", "input": "Answer in one sentence.",
           "output": "The capital of France is Paris."}
CHAT_EXAMPLE = {"messages": [
    {"role": "system", "content": "You answer geography questions."},
    {"role": "user", "content": "Capital of Spain?"},
    {"role": "assistant", "content": "Madrid."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
]}


@pytest.fixture(scope="module")
def plain_tokenizer(smollm_tokenizer):
    """The same tokenizer without a chat template (as a base model would ship)."""
    tokenizer = copy.deepcopy(smollm_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


def trained_ids(result: dict) -> list[int]:
    return [tok for tok, lab in zip(result["input_ids"], result["labels"]) if lab != IGNORE_INDEX]


def n_masked(result: dict) -> int:
    return sum(lab == IGNORE_INDEX for lab in result["labels"])


def test_smollm_pads_with_its_end_token(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    assert tok.pad_token_id == tok.eos_token_id == end_of_turn_id(tok)
    assert tok.eos_token == "<|im_end|>"
    assert tok.chat_template  # instruction-tuned: prompts go through its chat template


# ---------------------------------------------------------------- completion-only labels

@pytest.mark.parametrize("tokenizer_name", ["smollm_tokenizer", "plain_tokenizer"])
def test_instruction_trains_exactly_answer_and_end(request, tokenizer_name: str) -> None:
    tok = request.getfixturevalue(tokenizer_name)
    result = tokenize_example(EXAMPLE, tok, INSTRUCTION)
    assert len(result["input_ids"]) == len(result["labels"]) == result["length"]
    assert tok.decode(trained_ids(result)) == EXAMPLE["output"] + tok.eos_token
    # Trained labels are the tokens themselves, at their own positions (the model shifts them).
    masked = n_masked(result)
    assert result["labels"][:masked] == [IGNORE_INDEX] * masked
    assert result["labels"][masked:] == result["input_ids"][masked:]
    assert result["labels"][-1] == tok.eos_token_id


def test_instruction_without_input_and_with_fixed_instruction(smollm_tokenizer) -> None:
    config = DataConfig(recipe="instruction", instruction="Extract the entities.")
    example = {"input": "Ada Lovelace visited Paris.", "output": '{"person": ["Ada Lovelace"]}'}
    result = tokenize_example(example, smollm_tokenizer, config)
    assert smollm_tokenizer.decode(trained_ids(result)) == example["output"] + "<|im_end|>"
    prompt = smollm_tokenizer.decode(result["input_ids"][:n_masked(result)])
    assert "Extract the entities.\n\nAda Lovelace visited Paris." in prompt
    # An empty input adds no blank block.
    no_input = prompt_messages({"instruction": "Say hi.", "input": "", "output": "Hi"}, INSTRUCTION)
    assert no_input == [{"role": "user", "content": "Say hi."}]


def test_chat_trains_only_the_last_assistant_turn(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    result = tokenize_example(CHAT_EXAMPLE, tok, CHAT)
    assert tok.decode(trained_ids(result)) == "The capital of Italy is Rome.<|im_end|>"
    prompt = tok.decode(result["input_ids"][:n_masked(result)])
    # Earlier turns are context (masked), including the earlier assistant answer and the data's
    # own system prompt (which replaces the template's default one).
    assert "Madrid." in prompt and "You answer geography questions." in prompt
    assert "SmolLM" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_training_tokens_match_the_chat_template_of_the_whole_conversation(smollm_tokenizer) -> None:
    # Tokenizing prompt and answer separately must give the same ids as the chat template applied
    # to the full conversation (which ends the turn with "<|im_end|>\n"; the "\n" is not trained).
    tok = smollm_tokenizer
    result = tokenize_example(CHAT_EXAMPLE, tok, CHAT)
    full = tok.apply_chat_template(CHAT_EXAMPLE["messages"], tokenize=False)
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[:len(result["input_ids"])] == result["input_ids"]
    assert tok.decode(full_ids[len(result["input_ids"]):]) == "\n"


def test_system_prompt_from_config(smollm_tokenizer) -> None:
    config = DataConfig(recipe="instruction", system_prompt="Answer in French.")
    messages = prompt_messages(EXAMPLE, config)
    assert messages[0] == {"role": "system", "content": "Answer in French."}
    prompt = build_prompt(smollm_tokenizer, messages)
    assert "Answer in French." in prompt and "SmolLM" not in prompt
    # A chat example that brings its own system prompt keeps it.
    chat_config = DataConfig(recipe="chat", system_prompt="Answer in French.")
    assert prompt_messages(CHAT_EXAMPLE, chat_config) == CHAT_EXAMPLE["messages"][:-1]


def test_chat_row_with_only_an_assistant_turn_and_system_prompt(smollm_tokenizer) -> None:
    config = DataConfig(recipe="chat", system_prompt="Be brief.")
    example = {"messages": [{"role": "assistant", "content": "Hello there."}]}
    result = tokenize_example(example, smollm_tokenizer, config)
    assert smollm_tokenizer.decode(trained_ids(result)) == "Hello there.<|im_end|>"


def test_answer_text() -> None:
    assert answer_text(EXAMPLE, INSTRUCTION) == EXAMPLE["output"]
    assert answer_text(CHAT_EXAMPLE, CHAT) == "The capital of Italy is Rome."


@pytest.mark.parametrize("example, config", [(EXAMPLE, INSTRUCTION), (CHAT_EXAMPLE, CHAT)])
@pytest.mark.parametrize("tokenizer_name", ["smollm_tokenizer", "plain_tokenizer"])
def test_training_prompt_equals_inference_prompt(request, tokenizer_name, example, config) -> None:
    tok = request.getfixturevalue(tokenizer_name)
    result = tokenize_example(example, tok, config)
    inference_ids = encode_prompt(tok, build_prompt(tok, prompt_messages(example, config)))
    assert result["input_ids"][:len(inference_ids)] == inference_ids
    assert n_masked(result) == len(inference_ids)


def test_plain_template_without_chat_template(plain_tokenizer) -> None:
    config = DataConfig(recipe="instruction", system_prompt="Be brief.")
    prompt = build_prompt(plain_tokenizer, prompt_messages(EXAMPLE, config))
    assert prompt == PLAIN_PROMPT_TEMPLATE.format(
        instruction="Be brief.\n\nWhat is the capital of France?\n\nAnswer in one sentence.", input_block="")
    assert prompt.startswith("### Instruction:\n") and prompt.endswith("### Response:\n")
    assert "<|im_start|>" not in prompt
    result = tokenize_example(EXAMPLE, plain_tokenizer, config)
    assert plain_tokenizer.decode(result["input_ids"]) == prompt + EXAMPLE["output"] + "<|im_end|>"


def test_end_token_required(plain_tokenizer) -> None:
    tok = copy.deepcopy(plain_tokenizer)
    tok.eos_token = None
    with pytest.raises(TemplateError, match="neither a chat template nor an eos_token"):
        end_of_turn_id(tok)


# ---------------------------------------------------------------- five chat-template families

def test_trained_end_is_the_templates_end_of_turn(chat_tokenizer) -> None:
    """The answer ends with the end-of-turn token its own template writes, trained exactly once."""
    tok = chat_tokenizer
    expected_end = CHAT_STYLES[tok.style][5]
    result = tokenize_example(EXAMPLE, tok, INSTRUCTION)
    trained = trained_ids(result)
    assert tok.convert_ids_to_tokens(trained[-1]) == expected_end
    assert end_of_turn_id(tok) == trained[-1] == stop_token_ids(tok)[0]
    assert tok.decode(trained, skip_special_tokens=True).strip() == EXAMPLE["output"]
    check_labels(result["input_ids"], result["labels"], end_of_turn_id(tok))


def test_prompt_has_exactly_one_bos(chat_tokenizer) -> None:
    """A template that writes BOS and a tokenizer that adds BOS must not give two (Llama, Mistral, Gemma)."""
    tok = chat_tokenizer
    ids = tokenize_example(EXAMPLE, tok, INSTRUCTION)["input_ids"]
    if tok.bos_token_id is not None and (tok.chat_template or "").find("bos_token") >= 0 or tok.style == "plain-bos":
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    prompt_ids = encode_prompt(tok, build_prompt(tok, prompt_messages(EXAMPLE, INSTRUCTION)))
    assert ids[:len(prompt_ids)] == prompt_ids  # inference prompt == training prompt


def test_generation_stops_at_end_of_turn(chat_tokenizer) -> None:
    """A model whose every next token is the end of turn (or EOS) answers with nothing."""
    from tunebook.inference import generate

    tok = chat_tokenizer
    prompt = build_prompt(tok, prompt_messages(EXAMPLE, INSTRUCTION))
    for stop in stop_token_ids(tok):
        model = make_tiny_llama(len(tok), pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            model.lm_head.weight.zero_()
            model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)))
            model.lm_head.bias[stop] = 1.0
        assert generate(model, tok, [prompt], max_new_tokens=4, autocast=False) == [""]


# ---------------------------------------------------------------- padding

def test_collator_pads_but_keeps_the_real_end_token_trained(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    short = tokenize_example({"instruction": "Hi?", "input": "", "output": "Hello."}, tok, INSTRUCTION)
    long = tokenize_example(EXAMPLE, tok, INSTRUCTION)
    batch = completion_collator(tok)([short, long])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= len(long["input_ids"]) and width - len(long["input_ids"]) < 8
    for row, example in enumerate([short, long]):
        n = len(example["input_ids"])
        ids, mask, labels = (batch[k][row].tolist() for k in ("input_ids", "attention_mask", "labels"))
        assert ids[:n] == example["input_ids"] and labels[:n] == example["labels"]
        assert mask == [1] * n + [0] * (width - n)
        # Padding reuses the end token's id ...
        assert ids[n:] == [tok.pad_token_id] * (width - n)
        assert labels[n:] == [IGNORE_INDEX] * (width - n)
        # ... yet the real end token (the last real position) is still trained, exactly once.
        assert labels[n - 1] == tok.eos_token_id
        assert sum(lab == tok.eos_token_id for lab in labels) == 1
    assert (batch["input_ids"][0] == tok.eos_token_id).sum() > 1  # a pad-by-id mask would hit it
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels"))


def test_collator_fixed_length(smollm_tokenizer) -> None:
    example = tokenize_example(EXAMPLE, smollm_tokenizer, INSTRUCTION)
    batch = completion_collator(smollm_tokenizer, pad_to_length=200)([example])
    assert batch["input_ids"].shape == (1, 200)
    assert int(batch["attention_mask"].sum()) == len(example["input_ids"])


# ---------------------------------------------------------------- label checks

def test_check_labels_accepts_good_labels(smollm_tokenizer) -> None:
    result = tokenize_example(EXAMPLE, smollm_tokenizer, INSTRUCTION)
    check_labels(result["input_ids"], result["labels"], smollm_tokenizer.eos_token_id)


def test_check_labels_all_masked() -> None:
    with pytest.raises(ValueError, match="train example 3: every label is -100"):
        check_labels([5, 6, 7], [IGNORE_INDEX] * 3, end_id=2, where="train example 3: ")


def test_check_labels_untrained_end_token() -> None:
    # The answer is trained but the end token is masked (what masking pads by id does).
    with pytest.raises(ValueError, match=r"end token \(id 2\) is not trained"):
        check_labels([5, 6, 7, 2], [IGNORE_INDEX, 6, 7, IGNORE_INDEX], end_id=2)


def test_check_labels_length_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        check_labels([5, 6, 7, 2], [IGNORE_INDEX, 2], end_id=2)


# ---------------------------------------------------------------- lengths

def _tokenized(lengths: dict[str, list[int]]) -> DatasetDict:
    return DatasetDict({s: Dataset.from_dict({"length": ls, "idx": list(range(len(ls)))})
                        for s, ls in lengths.items()})


def test_drop_overlong_counts_and_drops_training_rows_only(capsys: pytest.CaptureFixture) -> None:
    data = drop_overlong(_tokenized({"train": [3, 10, 8, 12, 5], "test": [4, 40]}), max_length=8)
    assert data["train"]["idx"] == [0, 2, 4]
    assert data["test"]["idx"] == [0, 1]  # test rows are generated from, never dropped
    out = capsys.readouterr().out
    assert "2 of 5 train examples are longer than max_length=8" in out
    assert "test examples" not in out


def test_drop_overlong_everything_too_long() -> None:
    with pytest.raises(ValueError, match=r"data.max_length=4: every validation example is longer \(the shortest "
                                         r"has 5 tokens\)"):
        drop_overlong(_tokenized({"validation": [5, 6]}), max_length=4)


def test_tokenize_dataset_applies_max_length(smollm_tokenizer, capsys: pytest.CaptureFixture) -> None:
    rows = [{"instruction": "Q?", "input": "", "output": "word " * n, "row": n} for n in (1, 2, 40)]
    data = DatasetDict(train=Dataset.from_list(rows), test=Dataset.from_list(rows))
    lengths = tokenize_dataset(data, smollm_tokenizer, INSTRUCTION)["train"]["length"]
    cut = sorted(lengths)[1]
    config = DataConfig(recipe="instruction", max_length=cut)
    tokenized = tokenize_dataset(data, smollm_tokenizer, config)
    kept = tokenized["train"]
    assert kept["length"] == [n for n in lengths if n <= cut] and len(kept) == 2
    assert kept["row"] == [1, 2] and len(tokenized["test"]) == 3
    assert "1 of 3 train examples" in capsys.readouterr().out
    assert set(kept.column_names) == {"input_ids", "labels", "length", "row"}


def test_tokenize_dataset_classification_truncates_and_counts(smollm_tokenizer, capsys) -> None:
    rows = [{"text": "Goal in the final minute.", "label": 1, "row": 2},
            {"text": "Shares fell. " * 50, "label": 2, "row": 3}]
    data = DatasetDict(train=Dataset.from_list(rows), test=Dataset.from_list(rows))
    full = tokenize_dataset(data, smollm_tokenizer, DataConfig(recipe="classification"))["train"]
    assert full["label"] == [1, 2] and full["length"][1] > 16 and full["truncated"] == [False, False]
    out = tokenize_dataset(data, smollm_tokenizer, DataConfig(recipe="classification", max_length=16))
    for split in ("train", "test"):  # every row kept, the long one cut to 16 tokens
        assert out[split]["label"] == [1, 2] and out[split]["row"] == [2, 3]
        assert out[split]["length"] == [full["length"][0], 16] and out[split]["truncated"] == [False, True]
        assert out[split]["input_ids"][1] == full["input_ids"][1][:16]
    assert "1 of 2 test texts are longer than 16 tokens and were truncated" in capsys.readouterr().out


def test_length_stats() -> None:
    lengths = list(range(1, 101))
    stats = length_stats(lengths, max_length=90)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert (stats["count"], stats["min"], stats["max"]) == (100, 1, 100)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["over_max_length"] == 10 and stats["max_length"] == 90
    assert "over_max_length" not in length_stats(np.array([3, 4]))


@pytest.mark.parametrize("lengths, multiple, expected",
                         [([5, 17], 8, 24), ([16, 3], 8, 16), ([1], 8, 8), ([17], 1, 17), ([100], 64, 128)])
def test_suggest_max_length(lengths, multiple, expected) -> None:
    assert suggest_max_length(lengths, multiple) == expected


# ---------------------------------------------------------------- showing what is trained

def test_show_trained_tokens_marks_exactly_the_answer(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    result = tokenize_example(EXAMPLE, tok, INSTRUCTION)
    prompt = build_prompt(tok, prompt_messages(EXAMPLE, INSTRUCTION))
    shown = show_trained_tokens(result["input_ids"], result["labels"], tok)
    assert shown == f"{prompt}⟦{EXAMPLE['output']}<|im_end|>⟧"
    assert trained_segments(result["input_ids"], result["labels"], tok) == [
        (prompt, False), (EXAMPLE["output"] + "<|im_end|>", True)]


def test_show_trained_tokens_html_escapes(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    example = {"instruction": "Write <b>bold</b>", "input": "", "output": "Use <b> & </b>."}
    result = tokenize_example(example, tok, INSTRUCTION)
    shown = show_trained_tokens(result["input_ids"], result["labels"], tok, as_html=True)
    assert shown.startswith('<pre style="white-space:pre-wrap">') and shown.endswith("</pre>")
    assert '<span style="background:#b7f5b0">Use &lt;b&gt; &amp; &lt;/b&gt;.&lt;|im_end|&gt;</span>' in shown
    assert shown.count("background:#b7f5b0") == 1
    assert "<b>" not in shown


def test_trained_positions_only_gives_the_same_loss_and_gradients(smollm_tokenizer) -> None:
    """The LM head on the answer positions alone computes the very loss of the full head."""
    from tunebook.config import LoraSettings
    from tunebook.lora import apply_lora

    tok = smollm_tokenizer
    examples = [{"instruction": f"Question {i}?" + " more" * i, "input": "", "output": "An answer." + " yes" * (3 - i)}
                for i in range(4)]
    features = [tokenize_example(e, tok, INSTRUCTION) for e in examples]
    full = completion_collator(tok)(features)
    part = completion_collator(tok, trained_positions_only=True)(features)
    width = full["input_ids"].shape[1]
    kept = part["labels"].shape[1]
    assert kept < width and part["logits_to_keep"].tolist() == list(range(width - kept, width))
    torch.manual_seed(0)
    model = apply_lora(make_tiny_llama(len(tok), pad_token_id=tok.pad_token_id), LoraSettings(r=4, dropout=0.0),
                       verbose=False)
    losses, grads = [], []
    for batch in (full, part):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_length_stats_percentiles_are_numpys() -> None:
    lengths = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
    stats = length_stats(lengths)
    assert list(stats) == ["p50", "p90", "p95", "p99", "count", "mean", "max", "min"]
    for q in (50, 90, 95, 99):
        assert stats[f"p{q}"] == float(np.percentile(lengths, q))
    assert stats["p95"] != float(np.percentile(lengths, 96))


def test_trained_segments_with_several_runs(smollm_tokenizer) -> None:
    tok = smollm_tokenizer
    ids = tok("a b c d e", add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX, ids[1], IGNORE_INDEX, ids[3], ids[4]]
    assert trained_segments(ids, labels, tok) == [("a", False), (" b", True), (" c", False), (" d e", True)]
    assert show_trained_tokens(ids, labels, tok) == "a⟦ b⟧ c⟦ d e⟧"
    assert show_trained_tokens(ids, labels, tok, as_html=True) == (
        '<pre style="white-space:pre-wrap"><span style="color:#888">a</span><span style="background:#b7f5b0"> b</span>'
        '<span style="color:#888"> c</span><span style="background:#b7f5b0"> d e</span></pre>')


def test_template_that_rewrites_the_prompt_is_refused(smollm_tokenizer) -> None:
    tok = copy.deepcopy(smollm_tokenizer)
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<gen>{% else %}<|im_end|>{% endif %}")
    with pytest.raises(TemplateError) as info:
        tokenize_example({"instruction": "Q", "input": "", "output": "A"}, tok, INSTRUCTION)
    assert str(info.value) == (
        "The chat template renders the conversation differently once the answer is added (the prompt 'Q<gen>' is not "
        "a prefix of the full text 'QA<|im_end|>'), so the trained tokens cannot be separated from the prompt. Use a "
        "template whose generation prompt is a prefix of the rendered conversation.")
