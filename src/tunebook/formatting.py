"""Turn examples into prompts and token ids, and decide which tokens are trained.

One function, :func:`build_prompt`, makes the prompt for training *and* for inference, so the two
can never drift apart (the classic bug: train on one template, generate with another).

Completion-only loss: an example is ``prompt_ids + answer_ids + [end_id]`` and its labels are
``-100`` (ignored by the loss) on every prompt token, so the model learns to answer, not to
reproduce the question; the answer and its end token are trained, so the model learns to *stop*.
Labels are built from positions, never from ``input_ids == pad_token_id``: many tokenizers
(SmolLM2 included) use the end token as the pad token, and masking pads by id would also mask
the real end token, so the model would never learn to stop.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from .config import DataConfig

IGNORE_INDEX = -100
# Used when the tokenizer has no chat template (base models); Alpaca's widely used layout.
PLAIN_PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


def prompt_messages(example: dict, config: DataConfig) -> list[dict[str, str]]:
    """The conversation up to (not including) the answer, as chat messages."""
    if config.recipe == "chat":
        messages = list(example["messages"][:-1])
    else:
        instruction = example.get("instruction") or config.instruction or ""
        user = instruction + (f"\n\n{example['input']}" if example.get("input") else "")
        messages = [{"role": "user", "content": user}]
    if config.system_prompt and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    return messages


def answer_text(example: dict, config: DataConfig) -> str:
    """The target the model must produce (without the end token)."""
    return example["messages"][-1]["content"] if config.recipe == "chat" else example["output"]


def build_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """Render the prompt text that precedes the answer, for training and inference alike."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Plain template: system + user turns folded into the instruction.
    instruction = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
    return PLAIN_PROMPT_TEMPLATE.format(instruction=instruction, input_block="")


def end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an answer: the end-of-turn token of the chat format (EOS here)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token; set one so the model can learn to stop.")
    return tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    # Chat templates already write special tokens (BOS, turn markers) into the text; plain
    # prompts need the tokenizer to add BOS itself.
    return tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def tokenize_example(example: dict, tokenizer: PreTrainedTokenizerBase, config: DataConfig) -> dict:
    """input_ids, labels (prompt masked) and length for one instruction/chat example."""
    prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, prompt_messages(example, config)))
    answer_ids = tokenizer(answer_text(example, config), add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + answer_ids + [end_token_id(tokenizer)]
    labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids + [end_token_id(tokenizer)]
    return {"input_ids": input_ids, "labels": labels, "length": len(input_ids)}


def check_labels(input_ids: list[int], labels: list[int], end_id: int, where: str = "") -> None:
    """Fail loudly on the label bugs that train a model that never answers or never stops."""
    trained = [lab for lab in labels if lab != IGNORE_INDEX]
    if not trained:
        raise ValueError(f"{where}every label is -100: nothing would be trained (answer empty or cut off).")
    if trained[-1] != end_id:
        raise ValueError(f"{where}the end token (id {end_id}) is not trained: the model would not learn to stop.")
    if len(input_ids) != len(labels):
        raise ValueError(f"{where}input_ids and labels differ in length ({len(input_ids)} vs {len(labels)}).")


def tokenize_dataset(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, config: DataConfig,
                     label_names: list[str] | None = None) -> DatasetDict:
    """Tokenize every split for the recipe; checks labels and applies ``max_length``."""
    if config.recipe == "classification":
        label_ids = {name: i for i, name in enumerate(label_names or [])}

        def encode(example: dict) -> dict:
            ids = tokenizer(example["text"])["input_ids"]  # never cut silently: see drop_overlong
            label = example["label"]
            return {"input_ids": ids, "label": label_ids.get(str(label), label), "length": len(ids)}

        tokenized = DatasetDict({s: d.map(encode, remove_columns=[c for c in d.column_names if c != "label"])
                                 for s, d in data.items()})
        return drop_overlong(tokenized, config.max_length) if config.max_length else tokenized
    tokenized = DatasetDict({
        s: d.map(tokenize_example, fn_kwargs={"tokenizer": tokenizer, "config": config},
                 remove_columns=d.column_names, desc=f"tokenize {s}")
        for s, d in data.items()
    })
    end_id = end_token_id(tokenizer)
    for split, dataset in tokenized.items():
        for i, example in enumerate(dataset):
            check_labels(example["input_ids"], example["labels"], end_id, f"{split} example {i}: ")
    if config.max_length is not None:
        tokenized = drop_overlong(tokenized, config.max_length)
    return tokenized


def drop_overlong(tokenized: DatasetDict, max_length: int) -> DatasetDict:
    """Drop (and report) examples longer than max_length instead of cutting their answers silently."""
    out = {}
    for split, dataset in tokenized.items():
        keep = [i for i, n in enumerate(dataset["length"]) if n <= max_length]
        dropped = len(dataset) - len(keep)
        if dropped:
            print(f"[tunebook] warning: {dropped} of {len(dataset)} {split} examples are longer than "
                  f"max_length={max_length} tokens and were dropped (raise data.max_length to keep them)")
        if not keep:
            raise ValueError(f"Every {split} example is longer than max_length={max_length}; raise data.max_length.")
        out[split] = dataset.select(keep)
    return DatasetDict(out)


def length_stats(lengths: list[int] | np.ndarray, max_length: int | None = None) -> dict[str, float]:
    """Percentiles of token lengths and how many examples a ``max_length`` would cut."""
    lengths = np.asarray(lengths)
    stats = {f"p{q}": float(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
    stats.update(count=int(lengths.size), mean=float(lengths.mean()), max=int(lengths.max()), min=int(lengths.min()))
    if max_length is not None:
        stats["max_length"] = max_length
        stats["over_max_length"] = int((lengths > max_length).sum())
    return stats


def suggest_max_length(lengths: list[int] | np.ndarray, multiple: int = 8) -> int:
    """Smallest multiple of `multiple` that fits every example (so nothing is cut)."""
    longest = int(np.max(lengths))
    return -(-longest // multiple) * multiple


@dataclass
class CompletionCollator:
    """Pads a batch for causal-LM training: input_ids with pad, attention 0, labels -100.

    Dynamic padding pads to the longest example *in the batch* (rounded up to a multiple of 8
    for efficient kernels), not to a global max_length: with length grouping this removes most
    padding compute. ``pad_to_length`` reproduces the usual tutorial recipe (pad everything to a
    fixed length) for the benchmark.
    """

    tokenizer: PreTrainedTokenizerBase
    pad_to_multiple_of: int = 8
    pad_to_length: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        width = self.pad_to_length or -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            n = len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [pad_id] * (width - n))
            batch["attention_mask"].append([1] * n + [0] * (width - n))
            batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * (width - n))
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def trained_segments(input_ids: list[int], labels: list[int], tokenizer: PreTrainedTokenizerBase
                     ) -> list[tuple[str, bool]]:
    """Consecutive runs of (decoded text, is_trained): shows exactly what the loss sees."""
    flags = [label != IGNORE_INDEX for label in labels]
    segments, start = [], 0
    for trained, group in itertools.groupby(flags):
        n = len(list(group))
        segments.append((tokenizer.decode(input_ids[start:start + n]), trained))
        start += n
    return segments


def show_trained_tokens(input_ids: list[int], labels: list[int], tokenizer: PreTrainedTokenizerBase,
                        as_html: bool = False) -> str:
    """Text with trained tokens marked ⟦like this⟧ (or highlighted green in HTML)."""
    segments = trained_segments(input_ids, labels, tokenizer)
    if as_html:
        parts = [f'<span style="background:#b7f5b0">{html.escape(t)}</span>' if trained
                 else f'<span style="color:#888">{html.escape(t)}</span>' for t, trained in segments]
        return '<pre style="white-space:pre-wrap">' + "".join(parts) + "</pre>"
    return "".join(f"⟦{t}⟧" if trained else t for t, trained in segments)
