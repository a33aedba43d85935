"""Task metrics before and after fine-tuning: generate answers, score them, explain the errors.

The loss says how well the model predicts the reference tokens; the task metric says whether its
*answers* are right. Both are reported, for the base model and for the base + adapter, on the same
held-out split and with the same prompts as training (:mod:`tunebook.formatting` builds both), so
the before/after table isolates what the adapter changed. Simple baselines (:mod:`tunebook.baselines`:
bag-of-words, a gazetteer, copying the input) are scored on the same rows beside them, so the table
also says whether the fine-tune beats what a second of classical code reaches.

``run_evaluation`` writes ``<train.output_dir>/eval/`` (the layout: :mod:`tunebook.report`)::

    results.json       base, tuned and baseline metrics (+ perplexity, error counts and examples)
    predictions.jsonl  one row per example: input, reference, base, tuned and best-baseline output
    confusion_matrix_{base,tuned}.png   classification runs only
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .baselines import run_baselines
from .config import DataConfig, EvalConfig, RunConfig
from .environment import choose_precision, precision_dtype
from .errors import DataValidationError, RunFolderError
from .files import unwritable
from .formatting import (
    IGNORE_INDEX,
    TrainedPositionsOnly,
    accepts_logits_to_keep,
    answer_text,
    build_prompt,
    classification_length_limit,
    completion_collator,
    example_input,
    prompt_messages,
)
from .inference import autocast_for, batches_by_length, evaluation_mode, generate
from .log import get_logger
from .lora import check_adapter_files, load_adapter
from .metrics import load_metric
from .metrics.entity_f1 import ERROR_CATEGORIES, categorize_errors, parse_entities
from .models import load_model, load_tokenizer
from .plots import plot_confusion_matrix
from .prepare import prepare_tokenized
from .report import TABLE_KEYS, compare_table, log_report, write_results  # noqa: F401 (public here too)
from .runs import check_same_model

logger = get_logger()


def detect_task(references: list[str]) -> str:
    """Pick the metric family: ``extraction`` if every reference parses as a JSON entity object, else ``text``."""
    return "extraction" if references and all(parse_entities(r) is not None for r in references) else "text"


def evaluate_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, raw_split: Dataset,
                        data_config: DataConfig, eval_config: EvalConfig, task: str | None = None,
                        autocast: bool | None = None, desc: str = "generate") -> dict[str, Any]:
    """Generate an answer per example and score it against the reference answer.

    task: "extraction" (entity_f1: precision/recall/f1/per_type/valid_json_rate/exact_match) or
    "text" (text_overlap: exact_match/token_f1/rouge_l); None decides with :func:`detect_task`.
    Returns the metrics plus ``task``, ``predictions``, ``references``, ``inputs`` and
    ``cut_at_max_new_tokens`` (answers that reached the cap before their end token).
    """
    examples = list(raw_split)
    prompts = [build_prompt(tokenizer, prompt_messages(ex, data_config)) for ex in examples]
    references = [answer_text(ex, data_config) for ex in examples]
    task = task or detect_task(references)
    if task not in ("extraction", "text"):
        raise ValueError(f"Unknown generation task {task!r}; use 'extraction' or 'text'.")
    cut: list[int] = []
    predictions = generate(model, tokenizer, prompts, eval_config.max_new_tokens, eval_config.batch_size,
                           autocast=autocast, desc=desc, cut_rows=cut)
    metric = load_metric("entity_f1" if task == "extraction" else "text_overlap")
    scores = metric.compute(predictions=predictions, references=references)
    return {**scores, "task": task, "num_examples": len(examples), "cut_at_max_new_tokens": len(cut),
            "predictions": predictions, "references": references,
            "inputs": [example_input(ex, data_config) for ex in examples]}


def warn_if_answers_exceed_cap(tokenizer: PreTrainedTokenizerBase, references: list[str], max_new_tokens: int) -> int:
    """Warn when reference answers are longer than the generation cap; returns how many are.

    Such an answer cannot be produced whole (a cut JSON answer does not even parse), so every one of
    them scores as an error however good the model is: real NER sentences that list a team's
    players need well over the 64 tokens that suit the shipped extraction data. +1 counts the end token.
    """
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in references]
    over = sum(n > max_new_tokens for n in lengths)
    if over:
        logger.warning(f"{over} of {len(references)} reference answers need more than eval.max_new_tokens="
                       f"{max_new_tokens} tokens (the longest: {max(lengths)}); those answers will be cut and "
                       f"scored as errors. Set eval.max_new_tokens: {max(lengths)} to let them finish.")
    return over


def perplexity(model: PreTrainedModel, tokenized_split: Dataset, collator: Callable[[list[dict]], dict],
               batch_size: int = 16, autocast: bool | None = None) -> float:
    """exp(mean cross-entropy per answer token) over `tokenized_split` (labels != -100 only).

    Weighted by tokens, not batches: the model's own ``loss`` is a mean per batch, and averaging
    those would give a short-answer batch as much weight as a long one. Lower is better; 1.0 means
    the model predicts every reference token with certainty. Rows are batched by length, and the
    head computes logits only from each batch's first answer token on, as in training
    (`formatting.TrainedPositionsOnly`): the prompt's full-vocabulary logits would be discarded.
    """
    if accepts_logits_to_keep(model) and not isinstance(collator, TrainedPositionsOnly):
        collator = TrainedPositionsOnly(collator)
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with evaluation_mode(model), autocast_for(model, autocast):
        lengths = [len(ids) for ids in tokenized_split["input_ids"]]
        for rows in batches_by_length(lengths, batch_size, token_budget=True):
            batch = collator([tokenized_split[i] for i in rows])
            extra = {"logits_to_keep": batch["logits_to_keep"].to(device)} if "logits_to_keep" in batch else {}
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device), **extra).logits
            # Position t predicts token t+1: drop the last logit and the first label.
            labels = batch["labels"][:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
            total_loss += loss.item()
            total_tokens += int((labels != IGNORE_INDEX).sum())
    if total_tokens == 0:
        raise ValueError("perplexity: no answer tokens (every label is -100).")
    return math.exp(total_loss / total_tokens)


def evaluate_classification(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokenized_split: Dataset,
                            labels: list[str], batch_size: int = 16, out_png: str | Path | None = None,
                            autocast: bool | None = None, desc: str = "classify") -> dict[str, Any]:
    """Accuracy, macro-F1 and confusion matrix (``classification`` metric) of a classifier.

    `tokenized_split` has ``input_ids`` and an integer ``label``. Rows are batched by length and
    right-padded (sequence classifiers read the first token, BERT, or the last non-pad one), and
    predictions come back in the split's order. The confusion matrix is also drawn to `out_png`.
    """
    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    rows = tokenized_split["input_ids"]
    predictions: list[int] = [0] * len(rows)
    with evaluation_mode(model), autocast_for(model, autocast), tqdm(total=len(rows), desc=desc, unit="row") as bar:
        for batch in batches_by_length([len(r) for r in rows], batch_size, token_budget=True):
            inputs = collate([{"input_ids": rows[i]} for i in batch]).to(device)
            for i, predicted in zip(batch, model(**inputs).logits.argmax(-1).tolist()):
                predictions[i] = predicted
            bar.update(len(batch))
    references = [int(x) for x in tokenized_split["label"]]
    scores = load_metric("classification").compute(predictions=predictions, references=references,
                                                   num_labels=len(labels))
    if out_png is not None:
        plot_confusion_matrix(scores["confusion_matrix"], labels, out_png)
    return {**scores, "num_examples": len(references), "labels": list(labels), "predictions": predictions,
            "references": references}


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


def _evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: RunConfig, split: EvalSplit,
                    out: Path, name: str) -> dict:
    """Every metric of one model (base or tuned) on the evaluation split."""
    if config.data.recipe == "classification":
        return evaluate_classification(model, tokenizer, split.tokenized, split.labels, config.eval.batch_size,
                                       out / f"confusion_matrix_{name}.png", desc=f"classify ({name})")
    result = evaluate_generation(model, tokenizer, split.raw, config.data, config.eval, desc=f"generate ({name})")
    if len(split.validation):  # answer perplexity on the validation rows (none: no perplexity)
        result["perplexity"] = perplexity(model, split.validation, completion_collator(tokenizer),
                                          config.eval.batch_size)
    result["perplexity_rows"] = len(split.validation)
    if result["task"] == "extraction":
        result["errors"] = error_analysis(result["predictions"], result["references"], result["inputs"])
    return result


class EvalSplit:
    """The rows one evaluation scores (raw examples and their tokens), validation rows for perplexity,
    and ``train``: the raw training examples the model was trained on, which the baselines learn from."""

    def __init__(self, raw: Dataset, tokenized: Dataset, validation: Dataset, labels: list[str] | None,
                 name: str, total: int, train: Dataset):
        if raw["row"] != tokenized["row"]:  # classification scores tokens, reports raw rows: same order
            raise RuntimeError("tunebook bug: tokenized and raw evaluation rows are not aligned.")
        self.raw, self.tokenized, self.validation, self.labels = raw, tokenized, validation, labels
        self.name, self.total, self.train = name, total, train
        self.max_length: int | None = None  # classification: the tokens a text is cut to

    def __len__(self) -> int:
        return len(self.raw)


def evaluation_split(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> EvalSplit:
    """``eval.split`` of the prepared data, capped at ``eval.max_examples`` (its first rows)."""
    prepared = prepare_tokenized(config, tokenizer)
    name, cap = config.eval.split, config.eval.max_examples
    if len(prepared.raw[name]) == 0:
        source = prepared.report["sources"].get(name)
        why = (f"every row of {source} was dropped" if source else
               f"data.{name}_fraction is {getattr(config.data, f'{name}_fraction')} and {config.data.path} has "
               f"no {name} file")
        raise DataValidationError(f"eval.split: the {name} split has no rows to evaluate ({why}). Give a {name} "
                                  f"file, set data.{name}_fraction above 0, or evaluate the other split (eval.split).")

    def capped(dataset: Dataset) -> Dataset:
        return dataset.select(range(min(cap, len(dataset)))) if cap is not None else dataset

    # Training drops over-long generation examples after validation (formatting.drop_overlong): the
    # baselines get exactly the rows that were trained on, matched by their source row.
    trained_rows = set(prepared.tokenized["train"]["row"])
    train = prepared.raw["train"]
    if len(trained_rows) < len(train):
        train = train.select([i for i, row in enumerate(train["row"]) if row in trained_rows])
    split = EvalSplit(capped(prepared.raw[name]), capped(prepared.tokenized[name]),
                      capped(prepared.tokenized["validation"]), prepared.labels, name, len(prepared.raw[name]), train)
    if config.data.recipe == "classification":
        split.max_length = classification_length_limit(tokenizer, config.data.max_length)
    return split


def find_adapter(config: RunConfig, adapter_dir: str | None, compare_base: bool) -> Path | None:
    """The adapter to evaluate: `adapter_dir`, else the run's ``adapter/`` when it exists."""
    default = Path(config.train.output_dir) / "adapter"
    adapter = Path(adapter_dir) if adapter_dir is not None else default if default.is_dir() else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise RunFolderError(f"No adapter in '{adapter}' (adapter_config.json missing). Train first, or pass "
                             "--adapter with the adapter folder of a run.")
    if adapter is None and not compare_base:
        raise RunFolderError(f"Nothing to evaluate: no adapter in {default} and the base model is skipped.")
    if adapter is not None:
        check_adapter_files(adapter)  # a damaged file stops now, not after the base model's evaluation
    return adapter


def run_evaluation(config: RunConfig, adapter_dir: str | None = None, compare_base: bool = True,
                   out_dir: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate the base model and the base + adapter on ``config.eval.split``; write and print the results.

    adapter_dir defaults to ``<train.output_dir>/adapter`` when it exists; the config must describe
    the model that adapter was trained as (its run's config.yaml: model, LoRA shape, labels,
    prompts). The base is evaluated *before* the adapter is attached (so its numbers really are the
    base's); then the adapter is attached to the same model object, which saves loading the weights
    twice. Results are written to ``<train.output_dir>/eval`` (or `out_dir`), never over earlier
    results unless `overwrite`. Returns the dict written to results.json.
    """
    out = Path(out_dir or Path(config.train.output_dir) / "eval")
    adapter = find_adapter(config, adapter_dir, compare_base)
    if adapter is not None:
        check_same_model(adapter.parent, config, f"evaluate {adapter}")
    if (out / "results.json").is_file() and not overwrite:
        raise RunFolderError(f"{out} already holds evaluation results. Re-run with --overwrite to replace them, "
                             "or write them elsewhere with --out.")
    if reason := unwritable(out):
        raise RunFolderError(f"Cannot write evaluation results to {out}: {reason}. Write them elsewhere with --out.")
    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    split = evaluation_split(config, tokenizer)
    if config.data.recipe != "classification":  # said before the model loads: the fix is a config edit
        warn_if_answers_exceed_cap(tokenizer, [answer_text(ex, config.data) for ex in split.raw],
                                   config.eval.max_new_tokens)
    set_seed(config.train.seed)  # a new classification head starts as training's did
    # The base weights in the dtype training stored them in (bf16 where fast), so the model
    # evaluated is numerically the one trained.
    precision = choose_precision(config.train.precision)
    model = load_model(config.model.name, config.model.task, quantization=config.model.quantization,
                       dtype=precision_dtype(precision.value), label_names=split.labels,
                       trust_remote_code=config.model.trust_remote_code)
    logger.info(f"evaluating on {len(split)} of {split.total} {split.name} rows; {precision}")
    out.mkdir(parents=True, exist_ok=True)  # once data and model are fine: a failed start leaves nothing
    results: dict[str, dict] = {}
    if compare_base:
        if config.data.recipe == "classification":
            logger.info("base: the classification head is untrained (random), so base scores are near chance")
        results["base"] = _evaluate_model(model, tokenizer, config, split, out, "base")
    if adapter is not None:
        model = load_adapter(model, str(adapter), in_base_dtype=True)  # training's bf16 rounding, no fp32 casts
        results["tuned"] = _evaluate_model(model, tokenizer, config, split, out, "tuned")
    else:
        logger.info(f"no adapter at {Path(config.train.output_dir) / 'adapter'}: evaluating the base model only")
    task = "classification" if config.data.recipe == "classification" else next(iter(results.values()))["task"]
    baselines = run_baselines(task, split.train, split.raw, config.data, split.labels)
    summary = write_results(out, config, split, results, adapter, baselines)
    log_report(summary, results, baselines)
    logger.info(f"results written to {out}/results.json and predictions.jsonl")
    return summary
