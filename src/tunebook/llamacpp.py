"""Run an exported GGUF in llama.cpp itself (through llama-cpp-python) and score it on the test split.

transformers' GGUF reader (used by :mod:`tunebook.export` for verification) dequantizes the file
and runs tunebook's own PyTorch graph; this module runs llama.cpp's C++ graph, tokenizer and
chat-template rendering, i.e. what Ollama and LM Studio run. It answers three questions:

- does llama.cpp tokenize the chat-formatted prompts exactly as the training tokenizer did
  (``identical_prompt_ids``: the pre-tokenizer name and special tokens in the file are right);
- are its next-token logits those of the merged model (``logits``);
- does it give the same greedy answers and task metric (``create_chat_completion`` with the
  GGUF's own chat template, temperature 0, no repeat penalty, as tunebook evaluates).

llama-cpp-python is optional: it compiles llama.cpp from source on install (``make llama-cpp``,
``requirements-llamacpp.txt``; see docs/export.md for how long that takes on 2 cores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .data import load_and_validate
from .errors import RunFolderError, TunebookError
from .evaluation import detect_task, example_input
from .export import compare_logits, export_dir, load_gguf_model
from .files import write_json
from .formatting import answer_text, build_prompt, encode_prompt, prompt_messages
from .log import get_logger
from .metrics import load_metric
from .models import load_tokenizer

logger = get_logger()


def require_llama_cpp():
    """The ``llama_cpp`` module, or an ImportError that says how to get it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise TunebookError("llama-cpp-python is not installed. Run `make llama-cpp-setup` or `pip install -r "
                          "requirements-llamacpp.txt` (it compiles llama.cpp from source; see docs/export.md "
                          "for how long that takes).") from exc
    return llama_cpp


def load_llama(gguf_path: str | Path, n_ctx: int = 512, logits_all: bool = False, n_threads: int | None = None):
    """A ``llama_cpp.Llama`` for `gguf_path`; logits_all keeps every position's logits.

    n_threads defaults to every CPU core. On a machine busy with other work, 1 can be much faster:
    llama.cpp's threads meet at a barrier after every operation, and a thread the OS has parked
    makes the others wait for it.
    """
    llama_cpp = require_llama_cpp()
    return llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                           logits_all=logits_all, seed=0, verbose=False)


def llama_logits(llm, ids: list[int]) -> torch.Tensor:
    """Next-token logits of llama.cpp at every position of `ids` (the model needs ``logits_all=True``)."""
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32))


def chat_answer(llm, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """llama.cpp's greedy answer to a conversation, formatted by the GGUF's own chat template."""
    out = llm.create_chat_completion(messages=messages, temperature=0.0, repeat_penalty=1.0,
                                     max_tokens=max_new_tokens, seed=0)
    return (out["choices"][0]["message"]["content"] or "").strip()


def evaluate_llama_cpp(config: RunConfig, gguf_path: str | Path, logit_prompts: int = 8,
                       n_threads: int | None = None) -> dict[str, Any]:
    """Score `gguf_path` in llama.cpp on ``eval.split`` (capped at ``eval.max_examples``).

    Compared with the base model's tokenizer (prompt ids), the transformers-merged model (logits
    on the first `logit_prompts` prompts) and, when the export folder has ``predictions.jsonl``,
    the exported file's answers through transformers.
    """
    gguf_path = Path(gguf_path)
    tokenizer = load_tokenizer(config.model.name, config.model.trust_remote_code)
    split = load_and_validate(config.data)[0][config.eval.split]
    if config.eval.max_examples is not None:
        split = split.select(range(min(config.eval.max_examples, len(split))))
    llm = load_llama(gguf_path, logits_all=True, n_threads=n_threads)
    conversations = [prompt_messages(example, config.data) for example in split]
    ids = [encode_prompt(tokenizer, build_prompt(tokenizer, messages)) for messages in conversations]
    same_ids = sum(llm.tokenize(build_prompt(tokenizer, m).encode(), add_bos=False, special=True) == x
                   for m, x in zip(conversations, ids))
    report: dict[str, Any] = {"file": gguf_path.name, "split": config.eval.split, "rows": len(split),
                              "tokenizer": {"rows": len(split), "identical_prompt_ids": same_ids}}
    # Same file, two engines: transformers' dequantized fp32 graph vs llama.cpp's own kernels.
    reference, _ = load_gguf_model(gguf_path)
    report["logits_vs_transformers"] = compare_logits(reference, lambda x: llama_logits(llm, x), ids[:logit_prompts])
    del reference
    predictions = []
    for i, messages in enumerate(conversations):
        predictions.append(chat_answer(llm, messages, config.eval.max_new_tokens))
        if (i + 1) % 25 == 0:
            logger.info(f"llama.cpp: {i + 1}/{len(conversations)} answers")
    references = [answer_text(example, config.data) for example in split]
    task = detect_task(references)
    scores = load_metric("entity_f1" if task == "extraction" else "text_overlap").compute(
        predictions=predictions, references=references)
    keys = ["f1", "precision", "recall", "valid_json_rate", "exact_match"] if task == "extraction" \
        else ["exact_match", "token_f1", "rouge_l"]
    report["task_metric"] = {"task": task, "rows": len(split), "llama_cpp": {k: scores.get(k) for k in keys}}
    exported = gguf_path.parent / "predictions.jsonl"
    if exported.is_file():
        # Both are the first rows of the same split, so a shorter run compares on its own rows.
        rows = [json.loads(line) for line in exported.read_text().splitlines()][:len(predictions)]
        if len(rows) == len(predictions) and all(r["input"] == example_input(ex, config.data)
                                                 for r, ex in zip(rows, split)):
            same = sum(row["exported"] == p for row, p in zip(rows, predictions))
            report["greedy"] = {"rows": len(rows), "identical_to_transformers_exported": same}
    report["predictions"] = [{"input": example_input(ex, config.data), "llama_cpp": p}
                             for ex, p in zip(split, predictions)]
    return report


def run_llama_cpp(config: RunConfig, quant: str = "q8_0", gguf_path: str | Path | None = None,
                  out_dir: str | Path | None = None, n_threads: int | None = None) -> dict[str, Any]:
    """Score an export in llama.cpp and write ``llama_cpp.json`` next to it; return the report.

    gguf_path defaults to the ``.gguf`` file of ``<out_dir or <train.output_dir>/export>/<quant>/``
    (written by ``python -m tunebook export``).
    """
    require_llama_cpp()
    if gguf_path is None:
        folder = export_dir(config, quant, out_dir)
        found = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
        if len(found) != 1:
            raise RunFolderError(f"Expected one .gguf file in '{folder}', found {len(found)}. Run `python -m "
                                    f"tunebook export CONFIG --quant {quant}` first, or pass --gguf.")
        gguf_path = found[0]
    report = evaluate_llama_cpp(config, gguf_path, n_threads=n_threads)
    write_json(Path(gguf_path).parent / "llama_cpp.json", report)
    metric = report["task_metric"]
    key = "f1" if metric["task"] == "extraction" else "token_f1"
    logger.info(f"llama.cpp, {Path(gguf_path).name}: prompt ids identical to the training tokenizer's on "
                f"{report['tokenizer']['identical_prompt_ids']}/{report['rows']} rows")
    logits = report["logits_vs_transformers"]
    logger.info(f"logits vs the same file in transformers: max abs diff {logits['max_abs_diff']:.3g} over "
                f"{logits['positions']} positions of {logits['prompts']} prompts")
    if "greedy" in report:
        logger.info(f"greedy answers identical to transformers (same file): "
                    f"{report['greedy']['identical_to_transformers_exported']}/{report['greedy']['rows']} rows")
    logger.info(f"{key} on {metric['rows']} {report['split']} rows: {metric['llama_cpp'][key]:.3f}")
    logger.info(f"written to {Path(gguf_path).parent / 'llama_cpp.json'}")
    return report
