"""The cases that are not the easy one: label orders and encodings, and six tokenizer families.

Labels: a configured order that is not alphabetical, names with spaces and slashes, integer ids
counted from 0 or from 1 (``data.first_label_id``) with ids outside the range.

Tokenizers (conftest's ``chat_tokenizer``: ChatML, Llama 3, Gemma, Phi-3, Mistral, and a base
model without a chat template whose tokenizer adds BOS): on each, the prompt and the trained part
of an example are exactly the template's text, padding keeps the end token trained even where
pad == end token, and generation sends exactly the training prompt (one BOS) and stops on the
template's end of turn.
"""

from __future__ import annotations

import pytest
import torch
from conftest import CHAT_STYLES

from tunebook.config import DataConfig
from tunebook.data import DataValidationError, label_names, load_and_validate
from tunebook.formatting import (
    IGNORE_INDEX,
    build_prompt,
    completion_collator,
    encode_prompt,
    end_of_turn_id,
    prompt_messages,
    stop_token_ids,
    tokenize_dataset,
    tokenize_example,
)
from tunebook.inference import generate

# ---------------------------------------------------------------- labels

TOPICS = ["World News", "Sports", "Sci/Tech", "Business"]  # configured order: not alphabetical


def load(tmp_data, rows: list[dict], name: str = "train.jsonl", **kwargs):
    return load_and_validate(DataConfig(path=str(tmp_data(rows, name)), recipe="classification", **kwargs))


def all_examples(data) -> list[dict]:
    return [ex for split in data.values() for ex in split]


def test_configured_label_order_is_kept_for_names_with_spaces_and_slashes(tmp_data) -> None:
    rows = [{"text": f"story {i} about {label}", "label": f" {label} " if i % 2 else label}
            for i in range(5) for label in TOPICS]
    data, report = load(tmp_data, rows, labels=TOPICS)
    assert report["labels"] == TOPICS
    for ex in all_examples(data):
        assert ex["label"] == TOPICS.index(ex["text"].split(" about ")[1])


def test_labels_read_from_the_data_are_sorted(tmp_data) -> None:
    rows = [{"text": f"story {i} about {label}", "label": label} for i in range(5) for label in TOPICS]
    data, report = load(tmp_data, rows)
    assert report["labels"] == ["Business", "Sci/Tech", "Sports", "World News"]
    for ex in all_examples(data):
        assert report["labels"][ex["label"]] == ex["text"].split(" about ")[1]


def test_integer_labels_from_the_data_sort_as_numbers() -> None:
    train = [{"label": v} for v in (10, 2, 1, "2", 10.0)]
    assert label_names(train, DataConfig(recipe="classification")) == ["1", "2", "10"]


@pytest.mark.parametrize("first, values", [(0, [0, 1, 2]), (1, [1, 2, 3])])
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])  # CSV labels arrive as text: "1"
def test_integer_ids_count_from_first_label_id(tmp_data, first: int, values: list[int], suffix: str) -> None:
    labels = ["neg", "neu", "pos"]
    rows = [{"text": f"text {i}", "label": values[i % 3]} for i in range(30)]
    data, report = load(tmp_data, rows, f"train{suffix}", labels=labels, first_label_id=first)
    assert report["labels"] == labels
    for ex in all_examples(data):
        assert ex["label"] == int(ex["text"].split()[1]) % 3


@pytest.mark.parametrize("first, bad, hint", [
    (1, 0, "Label 0 in 1-based data"),  # 0 in 1-based ids is an error, never a silent extra class
    (1, 4, ""),
    (0, 3, "If your ids start at 1, set data.first_label_id: 1"),
    (0, -1, ""),
    (1, -1, ""),
])
def test_integer_id_outside_the_range_is_an_error(tmp_data, first: int, bad: int, hint: str) -> None:
    rows = [{"text": f"text {i}", "label": first + i % 3} for i in range(12)]
    rows[7]["label"] = bad
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load_and_validate(DataConfig(path=str(path), recipe="classification", labels=["a", "b", "c"],
                                     first_label_id=first))
    message = str(info.value)
    assert f"{path}, line 8, field 'label': id {bad} is outside {first}..{first + 2}" in message
    assert hint in message
    if not hint:
        assert "first_label_id: 1" not in message.replace("data.first_label_id)", "")


def test_zero_in_one_based_data_without_label_names_is_an_error(tmp_data) -> None:
    """Ids read from the data are checked against first_label_id too: a 0 is no class of 1-based data."""
    rows = [{"text": f"text {i}", "label": 1 + i % 3} for i in range(12)]
    data, report = load(tmp_data, rows, first_label_id=1)
    assert report["labels"] == ["1", "2", "3"]
    assert sorted({ex["label"] for ex in all_examples(data)}) == [0, 1, 2]
    rows[4]["label"] = 0
    path = tmp_data(rows, folder="zero")
    with pytest.raises(DataValidationError, match=r"line 5, field 'label': id 0 is below data.first_label_id"):
        load_and_validate(DataConfig(path=str(path), recipe="classification", first_label_id=1))


def test_unknown_label_name_is_an_error(tmp_data) -> None:
    rows = [{"text": f"text {i}", "label": TOPICS[i % 4]} for i in range(8)]
    rows[2]["label"] = "Sci-Tech"
    with pytest.raises(DataValidationError, match=r"line 3, field 'label': label 'Sci-Tech' is not in the label set"):
        load(tmp_data, rows, labels=TOPICS)


# ---------------------------------------------------------------- six tokenizer families

EXAMPLE = {"instruction": "What is the capital of France?", "input": "Answer in one sentence.",
           "output": "The capital of France is Paris."}
INSTRUCTION = DataConfig(recipe="instruction")
CHAT = DataConfig(recipe="chat")
# User/assistant turns only: Gemma's and Mistral's templates refuse a system turn.
CONVERSATION = {"messages": [{"role": "user", "content": "Capital of Spain?"},
                             {"role": "assistant", "content": "Madrid."},
                             {"role": "user", "content": "And of Italy?"},
                             {"role": "assistant", "content": "Rome."}]}
ADDS_BOS = {style for style, spec in CHAT_STYLES.items() if spec[4]}


def end_text(tok) -> str:
    return CHAT_STYLES[tok.style][5]


def split_example(result: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, trained ids), checking that the masked part is one prefix."""
    n = next(i for i, lab in enumerate(result["labels"]) if lab != IGNORE_INDEX)
    assert all(lab == IGNORE_INDEX for lab in result["labels"][:n])
    assert result["labels"][n:] == result["input_ids"][n:]  # nothing masked after the prompt
    return result["input_ids"][:n], result["input_ids"][n:]


@pytest.mark.parametrize("example, config", [(EXAMPLE, INSTRUCTION), (CONVERSATION, CHAT)])
def test_prompt_and_trained_text_are_the_templates(chat_tokenizer, example, config) -> None:
    tok = chat_tokenizer
    prompt_ids, trained = split_example(tokenize_example(example, tok, config))
    prompt = build_prompt(tok, prompt_messages(example, config))
    bos = tok.bos_token if tok.style == "plain-bos" else ""  # added by the tokenizer, not in the text
    assert tok.decode(prompt_ids) == bos + prompt
    answer = example["output"] if config is INSTRUCTION else "Rome."
    assert tok.decode(trained) == answer + end_text(tok)
    assert trained[-1] == end_of_turn_id(tok) and trained.count(end_of_turn_id(tok)) == 1
    if config is CHAT and tok.chat_template:  # earlier assistant turns are context, not trained
        assert "Madrid." in tok.decode(prompt_ids)
    elif config is CHAT:  # the plain template folds the user turns into one instruction
        assert tok.decode(prompt_ids).endswith("Capital of Spain?\n\nAnd of Italy?\n\n### Response:\n")


def test_bos_appears_exactly_once_where_the_family_uses_one(chat_tokenizer) -> None:
    tok = chat_tokenizer
    ids = tokenize_example(EXAMPLE, tok, INSTRUCTION)["input_ids"]
    bos = tok.bos_token_id
    if tok.style in ADDS_BOS:
        assert ids[0] == bos and ids.count(bos) == 1
    else:  # ChatML and Phi-3 prompts start with their turn marker (SmolLM2's BOS *is* <|im_start|>)
        assert tok.convert_ids_to_tokens(ids[0]) in ("<|im_start|>", "<|user|>")
        assert tok.style != "phi3" or bos not in ids
    if tok.chat_template:  # the template's text, tokenized with nothing added on top
        prompt = build_prompt(tok, prompt_messages(EXAMPLE, INSTRUCTION))
        assert encode_prompt(tok, prompt) == tok(prompt, add_special_tokens=False)["input_ids"]


def test_padding_keeps_the_end_token_trained(chat_tokenizer) -> None:
    """Mistral and the plain tokenizer pad with their end token: masking must go by position."""
    from datasets import Dataset, DatasetDict

    tok = chat_tokenizer
    rows = [EXAMPLE, {"instruction": "Hi?", "input": "", "output": "Hello."}]
    data = DatasetDict({"train": Dataset.from_list([{**r, "row": i + 1} for i, r in enumerate(rows)])})
    tokenized = tokenize_dataset(data, tok, INSTRUCTION)["train"]
    batch = completion_collator(tok)([{k: ex[k] for k in ("input_ids", "labels")} for ex in tokenized])
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(tokenized["length"])
    for row, ex in enumerate(tokenized):
        n = ex["length"]
        assert batch["labels"][row, :n].tolist() == ex["labels"]
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n - 1] == end_of_turn_id(tok)


class ScriptedModel(torch.nn.Module):
    """Stands in for a causal LM: records generate()'s arguments and answers with scripted tokens."""

    def __init__(self, answers: list[list[int]]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.answers, self.calls = answers, []

    def generate(self, input_ids, attention_mask, **kwargs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        new = torch.tensor([self.answers[int(row[-1]) % len(self.answers)] for row in input_ids])
        return torch.cat([input_ids, new], dim=1)


def test_generation_sends_the_training_prompt_and_decodes_the_answer(chat_tokenizer) -> None:
    tok = chat_tokenizer
    examples = [EXAMPLE, {"instruction": "Hi?", "input": "", "output": "Hello."}]
    prompts = [build_prompt(tok, prompt_messages(ex, INSTRUCTION)) for ex in examples]
    expected_ids = [encode_prompt(tok, p) for p in prompts]
    # Same as training: the prompt ids of tokenize_example.
    for ex, ids in zip(examples, expected_ids):
        assert split_example(tokenize_example(ex, tok, INSTRUCTION))[0] == ids
    end = end_of_turn_id(tok)
    answer = tok("Paris.", add_special_tokens=False)["input_ids"]
    other = tok("Hello there, friend.", add_special_tokens=False)["input_ids"]
    width = max(len(answer), len(other)) + 2
    scripted = [answer + [end] + [tok.pad_token_id] * (width - len(answer) - 1),
                other + [end] + [tok.pad_token_id] * (width - len(other) - 1)]
    model = ScriptedModel(scripted)
    outputs = generate(model, tok, prompts, max_new_tokens=7, batch_size=2, autocast=False)

    (call,) = model.calls
    assert call["max_new_tokens"] == 7 and call["do_sample"] is False
    assert call["eos_token_id"] == stop_token_ids(tok) and call["eos_token_id"][0] == end
    assert call["pad_token_id"] == tok.pad_token_id
    lengths = [len(ids) for ids in expected_ids]
    rows = call["input_ids"].tolist()
    order = sorted(range(2), key=lambda i: lengths[i], reverse=True)  # batched longest first
    for row, i in zip(rows, order):
        pad = len(row) - lengths[i]
        assert row[pad:] == expected_ids[i] and row[:pad] == [tok.pad_token_id] * pad  # left padding
    mask = call["attention_mask"].tolist()
    assert [sum(m) for m in mask] == [lengths[i] for i in order]
    # Each row's scripted answer is picked by its last prompt token: decode strips special tokens.
    by_last = {i: scripted[expected_ids[i][-1] % 2] for i in range(2)}
    for i in range(2):
        text = tok.decode(by_last[i], skip_special_tokens=True).strip()
        assert outputs[i] == text and text in ("Paris.", "Hello there, friend.")
        assert end_text(tok) not in outputs[i]


@pytest.mark.parametrize("first, bad, text", [
    (0, 3, "id 3 is outside 0..2, the ids of data.labels ['Dr. Who', 'Mr. X', 'Ms. Y']. If your ids start at 1, "
           "set data.first_label_id: 1."),
    (1, 0, "id 0 is outside 1..3, the ids of data.labels ['Dr. Who', 'Mr. X', 'Ms. Y']. Label 0 in 1-based data: "
           "fix the row, or set data.first_label_id: 0 if ids start at 0."),
    (1, 5, "id 5 is outside 1..3, the ids of data.labels ['Dr. Who', 'Mr. X', 'Ms. Y']."),
])
def test_label_errors_in_full_even_when_names_hold_a_full_stop(tmp_data, first: int, bad: int, text: str) -> None:
    rows = [{"text": f"text {i}", "label": first + i % 3} for i in range(6)]
    rows[2]["label"] = bad
    path = tmp_data(rows)
    with pytest.raises(DataValidationError) as info:
        load_and_validate(DataConfig(path=str(path), recipe="classification", labels=["Dr. Who", "Mr. X", "Ms. Y"],
                                     first_label_id=first))
    assert str(info.value) == f"{path}, line 3, field 'label': {text}"


def test_stop_tokens_are_the_end_of_turn_then_eos(chat_tokenizer) -> None:
    tok = chat_tokenizer
    end = end_of_turn_id(tok)
    assert stop_token_ids(tok) == ([end] if tok.eos_token_id == end else [end, tok.eos_token_id])
    assert len(stop_token_ids(tok)) == (2 if tok.style in ("llama3", "gemma", "phi3") else 1)
