"""Turn examples into prompts and token ids, and decide which tokens are trained.

One function, :func:`build_prompt`, makes the prompt for training *and* for inference, so the two
can never drift apart (the classic bug: train on one template, generate with another).

Completion-only loss: an example is ``prompt_ids + answer_ids`` and its labels are ``-100``
(ignored by the loss) on every prompt token, so the model learns to answer, not to reproduce the
question. The answer is what the chat template itself writes after the prompt, up to and including
the template's **end-of-turn token** (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3,
``<end_of_turn>`` for Gemma, ``<|end|>`` for Phi-3, ``</s>`` for Mistral): the model learns to stop
the way its serving engines expect, and generation stops on the same token.

Labels are built from positions, never from ``input_ids == pad_token_id``: many tokenizers
(SmolLM2 included) use the end token as the pad token, and masking pads by id would also mask
the real end token, so the model would never learn to stop. This masking is written out here
(rather than taken from TRL's ``DataCollatorForCompletionOnlyLM``) because it is the lesson of
notebook 01; padding, which teaches nothing, is transformers' ``DataCollatorForSeq2Seq``.
"""

from __future__ import annotations

import html
import inspect
import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from datasets import DatasetDict
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from .config import DataConfig
from .errors import DataValidationError, TemplateError
from .log import get_logger

logger = get_logger()

IGNORE_INDEX = -100
# Used when the tokenizer has no chat template (base models); Alpaca's widely used layout.
PLAIN_PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
# Tokenizers without a length limit report model_max_length as a huge sentinel (1e30).
_NO_LIMIT = 1_000_000


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


def example_input(example: dict, config: DataConfig) -> str:
    """The part of an example a reader needs to judge an answer: its input, else the question."""
    if config.recipe == "chat":
        return next(m["content"] for m in reversed(example["messages"]) if m["role"] != "assistant")
    return example.get("input") or example.get("instruction") or config.instruction or ""


def build_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """Render the prompt text that precedes the answer, for training and inference alike."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Plain template: system + user turns folded into the instruction.
    instruction = "\n\n".join(m["content"] for m in messages if m["role"] != "assistant")
    return PLAIN_PROMPT_TEMPLATE.format(instruction=instruction)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of a prompt from :func:`build_prompt`.

    Chat templates already write their special tokens (BOS, turn markers) into the text; adding
    them again would double the BOS of Llama- and Mistral-style tokenizers. Plain prompts need the
    tokenizer to add BOS itself.
    """
    return tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def encode_answer(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], answer: str) -> list[int]:
    """Token ids the model must produce after the prompt: the answer and the end-of-turn token.

    With a chat template, the whole conversation is rendered and the text after the prompt is
    kept up to and including the first special token, the template's end of turn (what follows
    it, e.g. a newline or Phi-3's trailing ``<|endoftext|>``, belongs to no answer). Without a
    template the end is ``eos_token``.
    """
    if not tokenizer.chat_template:
        if tokenizer.eos_token_id is None:
            raise TemplateError("The tokenizer has neither a chat template nor an eos_token, so an answer "
                                "has no end the model could learn. Set tokenizer.eos_token (or use a model "
                                "with a chat template).")
        return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = build_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise TemplateError(
            "The chat template renders the conversation differently once the answer is added (the "
            f"prompt {prompt[-60:]!r} is not a prefix of the full text {full[-120:]!r}), so the trained "
            "tokens cannot be separated from the prompt. Use a template whose generation prompt is a "
            "prefix of the rendered conversation.")
    ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    special = _special_ids(tokenizer)
    end = next((n for n, token in enumerate(ids) if token in special), None)
    if end is None:
        raise TemplateError(f"The chat template writes no special end-of-turn token after the answer "
                            f"({full[len(prompt):][-60:]!r}): the model could not learn to stop. Add one "
                            "to the template (as ChatML's <|im_end|>) or remove the template.")
    return ids[:end + 1]


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an answer: the chat template's end of turn (``eos_token`` without one).

    Read off a rendered one-turn conversation, so it is whatever the template writes.
    """
    return encode_answer(tokenizer, [{"role": "user", "content": "Hi"}], "Hello")[-1]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens generation stops on: the end of turn, and EOS where it differs (base-model habits)."""
    ids = [end_of_turn_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def tokenize_example(example: dict, tokenizer: PreTrainedTokenizerBase, config: DataConfig) -> dict:
    """input_ids, labels (prompt masked) and length for one instruction/chat example."""
    messages = prompt_messages(example, config)
    prompt_ids = encode_prompt(tokenizer, build_prompt(tokenizer, messages))
    answer_ids = encode_answer(tokenizer, messages, answer_text(example, config))
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
            "length": len(prompt_ids) + len(answer_ids)}


def check_labels(input_ids: list[int], labels: list[int], end_id: int, where: str = "") -> None:
    """Fail loudly on the label bugs that train a model that never answers or never stops."""
    trained = [lab for lab in labels if lab != IGNORE_INDEX]
    if not trained:
        raise ValueError(f"{where}every label is -100: nothing would be trained (answer empty or cut off).")
    if trained[-1] != end_id:
        raise ValueError(f"{where}the end token (id {end_id}) is not trained: the model would not learn to stop.")
    if len(input_ids) != len(labels):
        raise ValueError(f"{where}input_ids and labels differ in length ({len(input_ids)} vs {len(labels)}).")


def classification_length_limit(tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> int | None:
    """Tokens a classifier reads: ``data.max_length``, else the model's own limit (512 for BERT)."""
    model_limit = tokenizer.model_max_length if tokenizer.model_max_length < _NO_LIMIT else None
    return min(n for n in (max_length, model_limit) if n) if (max_length or model_limit) else None


def tokenize_dataset(data: DatasetDict, tokenizer: PreTrainedTokenizerBase, config: DataConfig) -> DatasetDict:
    """Tokenize every split for the recipe; checks labels and applies ``max_length``.

    Classification truncates over-long texts to the limit and counts them: a classifier still
    reads the first tokens, and every test row keeps its place in the denominator. Generation
    recipes never cut an answer: training and validation examples over ``max_length`` are dropped
    and counted, and test rows are all kept (evaluation generates from their prompts).
    """
    if config.recipe == "classification":
        limit = classification_length_limit(tokenizer, config.max_length)
        tokenized = DatasetDict({s: d.map(_encode_text, fn_kwargs={"tokenizer": tokenizer, "limit": limit},
                                          remove_columns=["text"], desc=f"tokenize {s}")
                                 for s, d in data.items()})
        tokenized = _empty_like_train(tokenized)
        for split, dataset in tokenized.items():
            if cut := sum(dataset["truncated"]):
                logger.warning(f"{cut} of {len(dataset)} {split} texts are longer than {limit} tokens and "
                               "were truncated to it (raise data.max_length to read more of them)")
        return tokenized
    roles = [c for c in next(iter(data.values())).column_names if c != "row"]
    tokenized = DatasetDict({
        s: d.map(tokenize_example, fn_kwargs={"tokenizer": tokenizer, "config": config},
                 remove_columns=roles, desc=f"tokenize {s}")
        for s, d in data.items()
    })
    tokenized = _empty_like_train(tokenized)
    end_id = end_of_turn_id(tokenizer)
    for split, dataset in tokenized.items():
        for i, example in enumerate(dataset):
            check_labels(example["input_ids"], example["labels"], end_id, f"{split} example {i}: ")
    if config.max_length is not None:
        tokenized = drop_overlong(tokenized, config.max_length, splits=("train", "validation"))
    return tokenized


def _empty_like_train(tokenized: DatasetDict) -> DatasetDict:
    """Empty splits (no rows to map, so `map` added no columns) get the tokenized train split's columns."""
    return DatasetDict({s: d if len(d) else tokenized["train"].select([]) for s, d in tokenized.items()})


def _encode_text(example: dict, tokenizer: PreTrainedTokenizerBase, limit: int | None) -> dict:
    ids = tokenizer(example["text"])["input_ids"]
    truncated = limit is not None and len(ids) > limit
    if truncated:  # re-encode so the tokenizer keeps its end token ([SEP]) inside the limit
        ids = tokenizer(example["text"], truncation=True, max_length=limit)["input_ids"]
    return {"input_ids": ids, "length": len(ids), "truncated": truncated}


def drop_overlong(tokenized: DatasetDict, max_length: int, splits: tuple[str, ...] = ("train", "validation")
                  ) -> DatasetDict:
    """Drop (and report) `splits`' examples longer than max_length instead of cutting their answers."""
    out = dict(tokenized)
    for split in splits:
        if split not in tokenized:
            continue
        dataset = tokenized[split]
        keep = [i for i, n in enumerate(dataset["length"]) if n <= max_length]
        if dropped := len(dataset) - len(keep):
            logger.warning(f"{dropped} of {len(dataset)} {split} examples are longer than max_length={max_length} "
                           "tokens and were dropped (raise data.max_length to keep them)")
        if not keep:
            shortest = min(dataset["length"])
            raise DataValidationError(
                f"data.max_length={max_length}: every {split} example is longer (the shortest has {shortest} tokens), "
                f"so no {split} example is left. Raise data.max_length to {shortest} or more, or set it to null to "
                "keep every example.")
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


def completion_collator(tokenizer: PreTrainedTokenizerBase, pad_to_length: int | None = None,
                        trained_positions_only: bool = False) -> Callable[[list[dict]], dict]:
    """Pads a causal-LM batch: input_ids with pad, attention 0, labels -100 (ignored by the loss).

    Dynamic padding pads to the longest example *in the batch* (rounded up to a multiple of 8 for
    efficient kernels), not to a global max_length: with length grouping this removes most padding
    compute. ``pad_to_length`` reproduces the usual tutorial recipe (pad everything to a fixed
    length) for the benchmark. Padding goes on the right (the tokenizer's training side).
    `trained_positions_only` adds :class:`TrainedPositionsOnly` (see there).
    """
    if pad_to_length is not None:
        collate = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=pad_to_length,
                                         label_pad_token_id=IGNORE_INDEX)
    else:
        collate = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=IGNORE_INDEX)
    return TrainedPositionsOnly(collate) if trained_positions_only else collate


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Does the model's forward (the base's, under peft) take `logits_to_keep` (see TrainedPositionsOnly)?"""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "logits_to_keep" in inspect.signature(forward).parameters


@dataclass
class TrainedPositionsOnly:
    """Have the model compute logits and loss only where something is trained (transformers' `logits_to_keep`).

    The LM head and the loss over the whole vocabulary (49,152 entries for SmolLM2, in fp32) cost as
    much as several decoder layers, yet prompt positions carry label -100 and add nothing to the
    loss. Each batch passes the model the positions from the one before its earliest trained token
    to the end (``logits_to_keep``, an index tensor: indexing copies them into one contiguous block
    for the head's matmul) and the labels from that position on; the model's own loss then shifts
    them as usual. The loss is identical (the tests compare it); the head and the loss shrink to the
    answers' share of the batch. Needs a model whose forward takes `logits_to_keep` (Llama,
    Mistral, Qwen2, Gemma, Phi-3 ... in transformers 5); decisions.choose_trained_positions_loss decides when.
    """

    collate: Callable[[list[dict]], dict]

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        labels = batch["labels"]
        trained = labels != IGNORE_INDEX
        first = int(trained.int().argmax(dim=1)[trained.any(dim=1)].min())  # earliest trained position
        start = max(first - 1, 0)  # the logit at position t predicts the token at t + 1
        batch["labels"] = labels[:, start:]
        batch["logits_to_keep"] = torch.arange(start, labels.shape[1])
        return batch


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
