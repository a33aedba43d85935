"""Task metrics before and after fine-tuning: generate answers, score them, explain the errors.

The loss says how well the model predicts the reference tokens; the task metric says whether its
*answers* are right. Both are reported, for the base model and for the base + adapter, on the same
held-out split and with the same prompts as training (:mod:`tunebook.formatting` builds both), so
the before/after table isolates what the adapter changed.

``run_evaluation`` writes ``<train.output_dir>/eval/``::

    results.json       base and tuned metrics (+ perplexity, error counts and examples)
    predictions.jsonl  one row per example: input, reference, base and tuned output, error categories
    confusion_matrix_{base,tuned}.png   classification runs only
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .config import DataConfig, EvalConfig, RunConfig
from .environment import choose_precision, precision_dtype
from .files import write_json
from .formatting import IGNORE_INDEX, CompletionCollator, answer_text, build_prompt, encode_prompt, \
    end_token_id, prompt_messages
from .lora import load_adapter
from .metrics import load_metric
from .metrics.entity_f1 import ERROR_CATEGORIES, categorize_errors, parse_entities
from .models import load_model, load_tokenizer
from .plots import plot_confusion_matrix
from .prepare import prepare_tokenized

# Rows of the before/after table per task; dotted keys reach into nested results.
TABLE_KEYS = {
    "extraction": ["f1", "precision", "recall", "valid_json_rate", "exact_match"],
    "text": ["exact_match", "token_f1", "rouge_l"],
    "classification": ["accuracy", "macro_f1"],
}


def _autocast(model: torch.nn.Module, enabled: bool | None) -> contextlib.AbstractContextManager:
    """bf16 autocast when the precision decision says bf16 and the weights are fp32.

    On a CPU with avx512_bf16/AMX, bf16 matmuls run up to about twice as fast as fp32, and the fp32
    master weights stay untouched. GPUs already hold bf16/fp16 weights (see `load_model`), so
    autocast would change nothing there. ``enabled=False`` forces exact fp32 (tests, merge checks).
    """
    param = next(model.parameters())
    if enabled is None:
        enabled = choose_precision("auto", param.device.type).value == "bf16" and param.dtype == torch.float32
    return torch.autocast(param.device.type, dtype=torch.bfloat16, enabled=bool(enabled))


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval() (dropout off) + no autograd for the block, then restore the model's previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]] | list[str],
             max_new_tokens: int = 96, batch_size: int = 16, autocast: bool | None = None,
             desc: str = "generate") -> list[str]:
    """Greedy answers to `prompts` (token ids, or prompt texts from `formatting.build_prompt`).

    Returns only the newly generated text, special tokens stripped, in the order of `prompts`.
    Prompts are sorted by length before batching so each batch pads little; generation stops at
    the answer end token (`formatting.end_token_id`), the token training taught the model to emit.
    """
    ids = [encode_prompt(tokenizer, p) if isinstance(p, str) else list(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token_id(tokenizer)
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(ids)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with _eval_mode(model), _autocast(model, autocast):
        for batch in tqdm(batches, desc=desc, unit="batch"):  # TQDM_DISABLE=1 hides it
            width = max(len(ids[i]) for i in batch)
            # LEFT padding: a decoder appends each new token after the last position of the row.
            # With right padding, a short prompt would be followed by pad tokens and the model would
            # continue after them. Left padding makes every prompt end at the same position; the
            # attention mask hides the pads and generate derives position ids from the mask.
            input_ids = torch.tensor([[pad_id] * (width - len(ids[i])) + ids[i] for i in batch], device=device)
            mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch], device=device)
            new = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, eos_token_id=end_token_id(tokenizer),
                                 pad_token_id=pad_id)[:, width:]
            for i, row in zip(batch, new):
                outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return outputs


def example_input(example: dict, data_config: DataConfig) -> str:
    """The part of an example a reader needs to judge an answer: its input, else the question."""
    if data_config.recipe == "chat":
        return next(m["content"] for m in reversed(example["messages"]) if m["role"] != "assistant")
    return example.get("input") or example.get("instruction") or data_config.instruction or ""


def detect_task(references: list[str]) -> str:
    """Pick the metric family: ``extraction`` if every reference parses as a JSON entity object, else ``text``."""
    return "extraction" if references and all(parse_entities(r) is not None for r in references) else "text"


def evaluate_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, raw_split: Dataset,
                        data_config: DataConfig, eval_config: EvalConfig, task: str | None = None,
                        autocast: bool | None = None, desc: str = "generate") -> dict[str, Any]:
    """Generate an answer per example and score it against the reference answer.

    task: "extraction" (entity_f1: precision/recall/f1/per_type/valid_json_rate/exact_match) or
    "text" (text_overlap: exact_match/token_f1/rouge_l); None decides with :func:`detect_task`.
    Returns the metrics plus ``task``, ``predictions``, ``references`` and ``inputs``.
    """
    examples = list(raw_split)
    prompts = [build_prompt(tokenizer, prompt_messages(ex, data_config)) for ex in examples]
    references = [answer_text(ex, data_config) for ex in examples]
    task = task or detect_task(references)
    if task not in ("extraction", "text"):
        raise ValueError(f"Unknown generation task {task!r}; use 'extraction' or 'text'.")
    predictions = generate(model, tokenizer, prompts, eval_config.max_new_tokens, eval_config.batch_size,
                           autocast=autocast, desc=desc)
    metric = load_metric("entity_f1" if task == "extraction" else "text_overlap")
    scores = metric.compute(predictions=predictions, references=references)
    return {**scores, "task": task, "predictions": predictions, "references": references,
            "inputs": [example_input(ex, data_config) for ex in examples]}


def perplexity(model: PreTrainedModel, tokenized_split: Dataset, collator: Callable[[list[dict]], dict],
               batch_size: int = 16, autocast: bool | None = None) -> float:
    """exp(mean cross-entropy per answer token) over `tokenized_split` (labels != -100 only).

    Weighted by tokens, not batches: the model's own ``loss`` is a mean per batch, and averaging
    those would give a short-answer batch as much weight as a long one. Lower is better; 1.0 means
    the model predicts every reference token with certainty.
    """
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with _eval_mode(model), _autocast(model, autocast):
        for start in range(0, len(tokenized_split), batch_size):
            end = min(start + batch_size, len(tokenized_split))
            batch = collator([tokenized_split[i] for i in range(start, end)])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            # Position t predicts token t+1: drop the last logit and the first label.
            labels = batch["labels"][:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            total_loss += loss.item()
            total_tokens += int((labels != IGNORE_INDEX).sum())
    if total_tokens == 0:
        raise ValueError("perplexity: no answer tokens (every label is -100).")
    return math.exp(total_loss / total_tokens)


def evaluate_classification(model: PreTrainedModel, tokenized_split: Dataset, labels: list[str],
                            batch_size: int = 16, out_png: str | Path | None = None,
                            autocast: bool | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion matrix (``classification`` metric) of a classifier.

    `tokenized_split` has ``input_ids`` and an integer ``label``. Rows are right-padded with the
    model's pad id (sequence classifiers read the last non-pad token, or the first token for BERT).
    The confusion matrix is also drawn to `out_png` when given.
    """
    pad_id = model.config.pad_token_id or 0
    device = next(model.parameters()).device
    predictions: list[int] = []
    with _eval_mode(model), _autocast(model, autocast):
        for start in range(0, len(tokenized_split), batch_size):
            rows = tokenized_split[start:start + batch_size]["input_ids"]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([list(r) + [pad_id] * (width - len(r)) for r in rows], device=device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
            predictions += model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1).tolist()
    references = [int(x) for x in tokenized_split["label"]]
    scores = load_metric("classification").compute(predictions=predictions, references=references,
                                                   num_labels=len(labels))
    if out_png is not None:
        import matplotlib.pyplot as plt

        plt.close(plot_confusion_matrix(scores["confusion_matrix"], labels, out_png))
    return {**scores, "labels": list(labels), "predictions": predictions, "references": references}


def error_analysis(predictions: list[str], references: list[str], inputs: list[str],
                   examples_per_category: int = 3) -> dict[str, Any]:
    """What kind of mistakes an extraction model makes (categories from `entity_f1.categorize_errors`).

    Returns ``per_example`` (a list of categories per example; empty = fully correct), ``counts``
    (examples per category, plus ``correct``) and ``examples`` (up to 3 per category, to read).
    """
    per_example = [categorize_errors(p, r) for p, r in zip(predictions, references)]
    counts = {"correct": sum(not cats for cats in per_example), **{c: 0 for c in ERROR_CATEGORIES}}
    examples: dict[str, list[dict[str, str]]] = {c: [] for c in ERROR_CATEGORIES}
    for cats, prediction, reference, text in zip(per_example, predictions, references, inputs):
        for c in cats:
            counts[c] += 1
            if len(examples[c]) < examples_per_category:
                examples[c].append({"input": text, "reference": reference, "prediction": prediction})
    return {"per_example": per_example, "counts": counts, "examples": {c: e for c, e in examples.items() if e}}


def _lookup(results: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(results, dict) or part not in results:
            return None
        results = results[part]
    return results


def compare_table(base: dict, tuned: dict, keys: list[str]) -> str:
    """A before/after text table: metric, base, tuned, delta (tuned - base). Dotted keys reach nested values."""
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    rows = [("metric", "base", "tuned", "delta")]
    for key in keys:
        a, b = _lookup(base, key), _lookup(tuned, key)
        delta = f"{b - a:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"
        rows.append((key, fmt(a), fmt(b), delta))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: RunConfig, raw: Dataset,
                    tokenized: Dataset, validation: Dataset, labels: list[str] | None, out: Path, name: str) -> dict:
    """Every metric of one model (base or tuned) on the evaluation split."""
    if config.data.recipe == "classification":
        return evaluate_classification(model, tokenized, labels, config.eval.batch_size,
                                       out / f"confusion_matrix_{name}.png")
    result = evaluate_generation(model, tokenizer, raw, config.data, config.eval, desc=f"generate ({name})")
    result["perplexity"] = perplexity(model, validation, CompletionCollator(tokenizer), config.eval.batch_size)
    if result["task"] == "extraction":
        result["errors"] = error_analysis(result["predictions"], result["references"], result["inputs"])
    return result


def _summary(result: dict) -> dict:
    """The results.json part of an evaluation: metrics only (per-example data goes to predictions.jsonl)."""
    summary = {k: v for k, v in result.items() if k not in ("predictions", "references", "inputs", "errors")}
    if "errors" in result:
        summary["error_counts"] = result["errors"]["counts"]
        summary["error_examples"] = result["errors"]["examples"]
    return summary


def run_evaluation(config: RunConfig, adapter_dir: str | None = None, compare_base: bool = True,
                   out_dir: str | None = None) -> dict[str, Any]:
    """Evaluate the base model and the base + adapter on ``config.eval.split``; write and print the results.

    adapter_dir defaults to ``<train.output_dir>/adapter`` when it exists. The base is evaluated
    *before* the adapter is attached (so its numbers really are the base's); then the adapter is
    attached to the same model object, which saves loading the weights twice. Perplexity uses the
    validation split (as training's eval loss does), capped at ``eval.max_examples`` like the split.
    Returns the dict written to results.json.
    """
    out = Path(out_dir or Path(config.train.output_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    default_adapter = Path(config.train.output_dir) / "adapter"
    if adapter_dir is None and default_adapter.is_dir():
        adapter_dir = str(default_adapter)
    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"No adapter in '{adapter_dir}' (adapter_config.json missing). Train first, "
                                "or pass --adapter with the adapter folder of a run.")
    if adapter_dir is None and not compare_base:
        raise ValueError("Nothing to evaluate: no adapter found and compare_base=False.")

    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    prepared = prepare_tokenized(config, tokenizer)
    split = config.eval.split
    if split not in prepared.raw:
        raise ValueError(f"eval.split={split!r} does not exist; splits: {list(prepared.raw)}.")
    cap = config.eval.max_examples

    def capped(dataset: Dataset) -> Dataset:
        return dataset.select(range(min(cap, len(dataset)))) if cap is not None else dataset

    raw, tokenized, validation = capped(prepared.raw[split]), capped(prepared.tokenized[split]), \
        capped(prepared.tokenized["validation"])
    set_seed(config.train.seed)  # a new classification head starts as training's did
    # The base weights in the dtype training stored them in (bf16 where fast), so the model
    # evaluated is numerically the one trained.
    precision = choose_precision(config.train.precision)
    model = load_model(config.model.name, config.model.task, quantization=config.model.quantization,
                       dtype=precision_dtype(precision.value), label_names=prepared.labels,
                       trust_remote_code=config.model.trust_remote_code)
    print(f"[tunebook] evaluating on {len(raw)} {split} examples; {precision}")
    results: dict[str, dict] = {}
    if compare_base:
        results["base"] = _evaluate_model(model, tokenizer, config, raw, tokenized, validation,
                                          prepared.labels, out, "base")
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir)
        results["tuned"] = _evaluate_model(model, tokenizer, config, raw, tokenized, validation,
                                           prepared.labels, out, "tuned")
    else:
        print(f"[tunebook] no adapter at {default_adapter}: evaluating the base model only")

    task = "classification" if config.data.recipe == "classification" else next(iter(results.values()))["task"]
    summary = {"model": config.model.name, "quantization": config.model.quantization, "adapter": adapter_dir,
               "split": split, "num_examples": len(raw), "task": task,
               **{name: _summary(r) for name, r in results.items()}}
    write_json(out / "results.json", summary)
    with open(out / "predictions.jsonl", "w") as f:
        for i, example in enumerate(raw):
            row: dict[str, Any] = {"index": i, "input": example_input(example, config.data)
                                   if task != "classification" else example["text"]}
            for name, r in results.items():
                if task == "classification":
                    row["reference"] = r["labels"][r["references"][i]]
                    row[f"{name}_output"] = r["labels"][r["predictions"][i]]
                else:
                    row["reference"] = r["references"][i]
                    row[f"{name}_output"] = r["predictions"][i]
                    if "errors" in r:
                        row[f"{name}_errors"] = r["errors"]["per_example"][i]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    keys = TABLE_KEYS[task] + [f"per_type.{t}.f1" for t in next(iter(results.values())).get("per_type", {})]
    keys += ["perplexity"] if task != "classification" else []
    print(compare_table(results.get("base", {}), results.get("tuned", {}), keys))
    print(f"[tunebook] results written to {out}/results.json and predictions.jsonl")
    return summary
