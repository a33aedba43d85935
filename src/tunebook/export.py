"""Take the model home: merge a run's adapter, write it as GGUF, and check the file answers the same.

``python -m tunebook export CONFIG --format gguf --quant {f16,bf16,q8_0}`` writes
``<train.output_dir>/export/<quant>/``::

    <run>-<quant>.gguf   weights + architecture + tokenizer + chat template (llama.cpp, Ollama, LM Studio)
    Modelfile            for `ollama create` (tunebook.ollama)
    verification.json    what the checks below measured, each number with the rows it covers
    predictions.jsonl    per row: input, reference, and the adapter's, merged and exported answers

Steps: the adapter is merged into full-precision base weights with
:func:`tunebook.inference.merge_adapter` (a QLoRA adapter into the *dequantized* 4/8-bit base, as
it was trained), the merged model is written with :func:`tunebook.gguf_convert.write_gguf`, and
the file is loaded back with transformers' own GGUF reader (``from_pretrained(gguf_file=...)``,
which dequantizes to fp32) and compared with the merged model:

- **weights**: largest difference per tensor; for f16/bf16 every weight must equal the merged
  weight rounded to that format (``weights_exact``), which also proves the q/k permutation and
  the tensor names round-trip;
- **logits**: max abs difference of next-token logits over every position of the first prompts;
- **tokenizer**: the tokenizer rebuilt from the file gives the same ids for every prompt;
- **greedy answers and the task metric** on the evaluation split (``eval.split``, capped at
  ``eval.max_examples``): the exported model's answers against the merged model's, and its
  metric next to the tuned adapter's (base + adapter, unmerged).

Everything is computed in fp32 without autocast, so a difference comes from the file alone. An
export never replaces an earlier one unless ``overwrite=True`` (``--overwrite``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import RunConfig
from .data import load_and_validate
from .errors import RunFolderError
from .evaluation import evaluate_generation
from .files import atomic_directory, write_json
from .formatting import build_prompt, encode_prompt, prompt_messages
from .gguf_convert import QUANT_TYPES, write_gguf
from .inference import _logits, _run_quantization, load_for_inference, merge_adapter
from .log import get_logger
from .models import load_model, load_tokenizer
from .ollama import ollama_model_name, write_modelfile

logger = get_logger()

FORMATS = ("gguf",)
LOGIT_PROMPTS = 8  # prompts whose every position is compared (the full split is compared by answers)


def export_dir(config: RunConfig, quant: str, out_dir: str | Path | None = None) -> Path:
    """Where one export lands: ``<out_dir or <train.output_dir>/export>/<quant>``."""
    return Path(out_dir or Path(config.train.output_dir) / "export") / quant


def load_gguf_model(gguf_path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF file loaded back by transformers (dequantized to fp32), with the tokenizer it describes."""
    gguf_path = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval(), tokenizer


def _round_to(tensor: torch.Tensor, quant: str) -> torch.Tensor | None:
    """`tensor` as the file stores it, for the formats that are plain rounding (None for q8_0)."""
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}.get(quant)
    return None if dtype is None or tensor.ndim == 1 else tensor.to(dtype).float()


def compare_weights(merged: PreTrainedModel, exported: PreTrainedModel, quant: str) -> dict[str, Any]:
    """Largest weight difference, and (f16/bf16) whether every weight is the merged one rounded."""
    exported_state = exported.state_dict()
    worst, worst_name, exact = 0.0, "", quant in ("f16", "bf16")
    for name, tensor in merged.state_dict().items():
        if name not in exported_state:
            raise ValueError(f"The exported model has no tensor {name!r}; GGUF tensor names did not round-trip.")
        diff = float((tensor.float() - exported_state[name].float()).abs().max())
        if diff > worst:
            worst, worst_name = diff, name
        rounded = _round_to(tensor.float(), quant)
        if rounded is not None:
            exact = exact and torch.equal(rounded, exported_state[name].float())
        elif tensor.ndim == 1:
            exact = exact and torch.equal(tensor.float(), exported_state[name].float())
    return {"tensors": len(exported_state), "max_abs_diff": worst, "worst_tensor": worst_name,
            "weights_exact": exact if quant in ("f16", "bf16") else None}


def compare_logits(model_a, model_b, prompts: list[list[int]]) -> dict[str, Any]:
    """Max abs difference of next-token logits over every position of `prompts` (fp32), and how
    often the two models' top token agrees. A model is a transformers model or a function
    ``ids -> logits`` (llama.cpp's, in tunebook.llamacpp)."""
    def as_function(model):
        return (lambda ids: _logits(model, ids)) if isinstance(model, torch.nn.Module) else model

    logits_a, logits_b = as_function(model_a), as_function(model_b)
    diff, agree, positions = 0.0, 0, 0
    for ids in prompts:
        a, b = logits_a(ids), logits_b(ids)
        diff = max(diff, float((a - b).abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += len(ids)
    return {"prompts": len(prompts), "positions": positions, "max_abs_diff": diff,
            "top1_agreement": agree / positions if positions else None}


def verify_export(gguf_path: str | Path, merged: PreTrainedModel, merged_tokenizer: PreTrainedTokenizerBase,
                  config: RunConfig, quant: str, adapter_dir: str | Path | None = None,
                  adapter_quantization: str | None = None) -> dict[str, Any]:
    """Load `gguf_path` back and compare it with the merged model (see the module docstring).

    adapter_dir: also score base + adapter (unmerged, the base loaded in `adapter_quantization` as
    in training) on the same rows; None skips it.
    """
    exported, exported_tokenizer = load_gguf_model(gguf_path)
    raw, _ = load_and_validate(config.data)
    split = raw[config.eval.split]
    if config.eval.max_examples is not None:
        split = split.select(range(min(config.eval.max_examples, len(split))))
    prompts = [build_prompt(merged_tokenizer, prompt_messages(example, config.data)) for example in split]
    ids = [encode_prompt(merged_tokenizer, p) for p in prompts]
    exported_prompts = [build_prompt(exported_tokenizer, prompt_messages(example, config.data)) for example in split]
    same_ids = sum(encode_prompt(exported_tokenizer, p) == x for p, x in zip(exported_prompts, ids))
    report: dict[str, Any] = {
        "file": Path(gguf_path).name, "quant": quant, "bytes": Path(gguf_path).stat().st_size,
        "split": config.eval.split, "rows": len(split), "compute": "fp32 on CPU, no autocast",
        "weights": compare_weights(merged, exported, quant),
        "logits": compare_logits(merged, exported, ids[:LOGIT_PROMPTS]),
        "tokenizer": {"rows": len(split), "identical_prompt_ids": same_ids,
                      "chat_template_identical": exported_tokenizer.chat_template == merged_tokenizer.chat_template},
    }
    results = {"merged": evaluate_generation(merged, merged_tokenizer, split, config.data, config.eval,
                                             autocast=False, desc="generate (merged)"),
               "exported": evaluate_generation(exported, exported_tokenizer, split, config.data, config.eval,
                                               autocast=False, desc=f"generate (exported {quant})")}
    if adapter_dir is not None:
        adapter_model, tokenizer = load_for_inference(config.model.name, adapter_dir, adapter_quantization,
                                                      dtype=None if adapter_quantization else torch.float32)
        results["adapter"] = evaluate_generation(adapter_model, tokenizer, split, config.data, config.eval,
                                                 autocast=False, desc="generate (adapter)")
    same = sum(a == b for a, b in zip(results["merged"]["predictions"], results["exported"]["predictions"]))
    report["greedy"] = {"rows": len(split), "identical_to_merged": same, "rate": same / len(split) if split else None,
                        "examples": [{"input": results["merged"]["inputs"][i], "merged": a, "exported": b}
                                     for i, (a, b) in enumerate(zip(results["merged"]["predictions"],
                                                                    results["exported"]["predictions"]))
                                     if a != b][:5]}
    task = results["merged"]["task"]
    keys = ["f1", "precision", "recall", "valid_json_rate", "exact_match"] if task == "extraction" \
        else ["exact_match", "token_f1", "rouge_l"]
    report["task_metric"] = {"task": task, "rows": len(split),
                             **{name: {k: r.get(k) for k in keys} for name, r in results.items()}}
    # Per row, for predictions.jsonl (export_run writes it and drops this key from the JSON summary).
    report["predictions"] = [{"input": results["merged"]["inputs"][i], "reference": results["merged"]["references"][i],
                              **{name: r["predictions"][i] for name, r in results.items()}} for i in range(len(split))]
    return report


def _summary_lines(report: dict[str, Any]) -> list[str]:
    metric = report["task_metric"]
    key = "f1" if metric["task"] == "extraction" else "token_f1"
    scores = ", ".join(f"{name} {metric[name][key]:.3f}" for name in ("adapter", "merged", "exported")
                       if name in metric)
    weights = report["weights"]
    return [
        f"{report['file']}: {report['bytes'] / 2**20:.1f} MiB",
        f"weights: max abs diff {weights['max_abs_diff']:.3g} over {weights['tensors']} tensors"
        + (f" (every weight equals the merged one rounded to {report['quant']}: {weights['weights_exact']})"
           if weights["weights_exact"] is not None else ""),
        (f"logits vs merged: max abs diff {report['logits']['max_abs_diff']:.3g} over {report['logits']['positions']} "
         f"positions of {report['logits']['prompts']} prompts; "
         f"top-1 agreement {report['logits']['top1_agreement']:.4f}"),
        (f"tokenizer from the file: identical prompt ids on {report['tokenizer']['identical_prompt_ids']}"
         f"/{report['tokenizer']['rows']} rows"),
        (f"greedy answers identical to merged: {report['greedy']['identical_to_merged']}"
         f"/{report['greedy']['rows']} rows"),
        f"{key} on {metric['rows']} {report['split']} rows: {scores}",
    ]


def export_run(config: RunConfig, quant: str = "f16", fmt: str = "gguf", adapter_dir: str | Path | None = None,
               out_dir: str | Path | None = None, overwrite: bool = False, verify: bool = True) -> dict[str, Any]:
    """Merge the run's adapter, write ``<run>-<quant>.gguf`` and a Modelfile, verify; return the summary.

    adapter_dir defaults to ``<train.output_dir>/adapter``; out_dir to ``<train.output_dir>/export``
    (the files go to its ``<quant>`` subfolder). verify=False skips the checks (minutes on a CPU).
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; supported: {list(FORMATS)}.")
    if quant not in QUANT_TYPES:
        raise ValueError(f"Unknown quant {quant!r}; use one of {sorted(QUANT_TYPES)}.")
    adapter = Path(adapter_dir or Path(config.train.output_dir) / "adapter")
    if not (adapter / "adapter_config.json").is_file():
        raise RunFolderError(f"No adapter in '{adapter}' (adapter_config.json missing). Train first, "
                                "or pass --adapter with the adapter folder of a run.")
    target = export_dir(config, quant, out_dir)
    if target.exists() and not overwrite:
        raise RunFolderError(f"An export already exists in '{target}'. Pass --overwrite to replace it, or "
                              "--out to write this one elsewhere.")
    run_name = Path(config.train.output_dir).name
    # The adapter's own run config knows whether it was trained on a 4/8-bit base; else the given config.
    quantization = _run_quantization(adapter) if (adapter.parent / "config.yaml").is_file() \
        else config.model.quantization
    target.parent.mkdir(parents=True, exist_ok=True)
    # The merged fp32 model is a temporary (about 4 bytes per parameter): the GGUF is what is kept.
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=target.parent) as tmp, atomic_directory(target) as staging:
        merged_dir = merge_adapter(config.model.name, adapter, Path(tmp) / "merged", quantization=quantization)
        merged, tokenizer = load_model(str(merged_dir), dtype=torch.float32).eval(), load_tokenizer(str(merged_dir))
        gguf_path = write_gguf(merged, tokenizer, staging / f"{run_name}-{quant}.gguf", quant, name=run_name,
                               description=f"{config.model.name} with the LoRA adapter of {run_name} merged "
                                           "(tunebook export)")
        write_modelfile(staging, gguf_path.name, tokenizer, config, ollama_model_name(run_name))
        summary: dict[str, Any] = {"file": gguf_path.name, "quant": quant, "bytes": gguf_path.stat().st_size,
                                   "base_model": config.model.name, "adapter": str(adapter),
                                   "base_quantization": config.model.quantization}
        if verify:
            summary.update(verify_export(gguf_path, merged, tokenizer, config, quant, adapter, quantization))
            rows = summary.pop("predictions")
            (staging / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            for line in _summary_lines(summary):
                logger.info(line)
        write_json(staging / "verification.json", summary)
    written = "GGUF, Modelfile, verification.json" + (", predictions.jsonl" if verify else "")
    logger.info(f"export written to {target}/ ({written})")
    return summary
