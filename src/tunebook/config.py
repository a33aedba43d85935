"""Run configuration: one dataclass per pipeline stage, loaded from YAML.

A run is described by a YAML file in ``configs/`` with one section per stage::

    model: {name: smollm2-135m-instruct, quantization: null}
    data:  {path: data/extraction, recipe: instruction, ...}
    lora:  {r: 16, alpha: 32, ...}
    train: {max_steps: 150, ...}
    eval:  {max_new_tokens: 64, ...}

A file may start with ``extends: lora.yaml`` (a path relative to it) and then list only the keys
that differ. Why dataclasses and not free dicts: a typo such as ``lerning_rate`` would otherwise be
ignored silently and the run would use the default. Here every unknown key is an error that names
the nearest valid key, and every value is checked against the field's type and range before any
model loads, with the file and line in the message. Overrides use dotted keys
(``train.learning_rate=1e-4``) from the CLI (``--set``) or a notebook (:func:`apply_overrides`).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_checks import build, fail, ranged, suggest
from .errors import ConfigError

__all__ = ["ConfigError", "ModelConfig", "DataConfig", "LoraSettings", "TrainConfig", "EvalConfig", "RunConfig",
           "load_config", "apply_overrides", "config_from_dict", "config_to_dict", "save_config"]


@dataclass
class ModelConfig:
    """Which model to load and how."""

    # A local directory, an embedded name (see `tunebook.models.EMBEDDED_MODELS`) or a Hub id.
    name: str = "smollm2-135m-instruct"
    # "causal-lm" for generation, "sequence-classification" for a new classification head.
    task: Literal["causal-lm", "sequence-classification"] = "causal-lm"
    # None keeps full-precision weights; "4bit" (NF4, QLoRA) or "8bit" (LLM.int8) need bitsandbytes.
    quantization: Literal["4bit", "8bit"] | None = None
    # Off by default: remote code runs arbitrary Python from the model repository.
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    """Where the data is and how its columns map to the roles a recipe needs."""

    # A file or folder (JSONL, JSON, CSV, TSV, Parquet, CoNLL/BIO), a mapping
    # {train: file, validation: file, test: file}, or a Hub dataset id.
    path: str | dict[str, str] = "data/extraction"
    # "instruction": instruction/input/output; "chat": a messages column; "classification": text/label.
    recipe: Literal["instruction", "chat", "classification"] = "instruction"
    # Role -> column name in your files, e.g. {input: sentence, output: answer}; a text role may
    # name several columns, joined with a newline ({text: [title, description]}). Roles not given
    # keep their own name as the column name.
    columns: dict[str, str | list[str]] = field(default_factory=dict)
    # Column names for CSV/TSV files without a header row (e.g. [label, title, description]).
    csv_header: list[str] | None = None
    # A fixed instruction used when the data has no instruction column (e.g. the extraction task).
    instruction: str | None = None
    # Optional system prompt; None keeps the chat template's own default.
    system_prompt: str | None = None
    # Classification only: the label names, in id order. Empty means "read them from the data".
    labels: list[str] = field(default_factory=list)
    # Integer labels in the data are ids of `labels` counted from this number (AG News' CSV: 1).
    first_label_id: Literal[0, 1] = 0
    # Tokens per example. None: no limit (generation keeps every example whole; classification
    # reads up to the model's own limit). A number drops longer training/validation examples of
    # generation recipes (counted, never cut) and truncates classification texts (counted).
    max_length: int | None = ranged(None, ge=1)
    # Used only when the data has no validation/test split of its own.
    validation_fraction: float = ranged(0.1, ge=0, lt=1)
    test_fraction: float = ranged(0.1, ge=0, lt=1)
    # Rows of validation/test whose input also occurs in train stop the run; true drops them (counted).
    drop_leaked_rows: bool = False
    seed: int = ranged(0, ge=0)
    # Cap the number of training examples (a seeded sample; quick experiments, smoke tests). None = all.
    max_train_examples: int | None = ranged(None, ge=1)


@dataclass
class LoraSettings:
    """The LoRA knobs. See `tunebook.lora` for what each one does."""

    r: int = ranged(16, ge=1)
    alpha: float = ranged(32, gt=0)
    dropout: float = ranged(0.05, ge=0, lt=1)
    # "auto" picks the attention and MLP projections for the architecture; or list names.
    target_modules: list[str] | str = "auto"
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for `tunebook.train`."""

    output_dir: str = "runs/default"
    max_steps: int = ranged(150, ge=1)
    per_device_batch_size: int = ranged(8, ge=1)
    gradient_accumulation_steps: int = ranged(1, ge=1)
    # Adam-family rates above 1 only diverge; LoRA's usual range is 1e-5 to 3e-3.
    learning_rate: float = ranged(2e-4, gt=0, le=1)
    warmup_ratio: float = ranged(0.05, ge=0, lt=1)
    weight_decay: float = ranged(0.0, ge=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    # Gradient clipping; also what DeepSpeed configs take as their gradient_clipping.
    max_grad_norm: float = ranged(1.0, gt=0)
    # "auto" picks bf16 where the device supports it, else fp16 on CUDA, else fp32 (printed).
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Trades compute (~30% on GPUs, 2-13% measured on a CPU) for much less activation memory.
    # "auto": on for 7B-class models (>= 5B parameters), and for smaller ones when the longest batch's
    # estimated step needs more than 75% of the free memory (tunebook.memory); printed with the figures.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # Batches similar lengths together so that dynamic padding wastes little compute.
    group_by_length: bool = True
    # None: dynamic padding (to the longest example in each batch). An int pads every causal-LM
    # batch to that fixed length, the usual tutorial recipe (benchmarks/ measures what it costs).
    pad_to_length: int | None = ranged(None, ge=1)
    logging_steps: int = ranged(10, ge=1)
    eval_steps: int = ranged(50, ge=1)
    save_steps: int = ranged(50, ge=1)
    save_total_limit: int | None = ranged(2, ge=1)
    # "auto": paged 8-bit AdamW for QLoRA on CUDA, AdamW otherwise.
    optim: Literal["auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adamw_8bit", "sgd"] = "auto"
    seed: int = ranged(42, ge=0)
    # Validation rows the eval loss during training uses (0 = no evaluation during training; None = all).
    eval_loss_examples: int | None = ranged(200, ge=0)
    # Classification only. "balanced" weights each class's loss by rows / (classes x its rows), as
    # scikit-learn's class_weight="balanced": a rare class (13 % spam) counts as much as a common one.
    class_weights: Literal["balanced"] | None = None
    # CPU under glibc: tensors of 1 MiB or more get their own mapping, so freed ones go back to the
    # OS instead of fragmenting the heap. Measured on SmolLM2 (fp32, benchmarks/README.md): peak RSS
    # -21 % at batch 8 x 128 and -41 % at 8 x 488, steps 19 % and ~5 % slower. false keeps glibc's
    # default (faster steps, a resident set up to ~1.7x larger). Set once per process.
    release_host_memory: bool = True


@dataclass
class EvalConfig:
    """Task evaluation (generation or classification) on a held-out split."""

    split: Literal["validation", "test"] = "test"
    max_examples: int | None = ranged(None, ge=1)
    batch_size: int = ranged(16, ge=1)
    max_new_tokens: int = ranged(96, ge=1)


@dataclass
class RunConfig:
    """A whole run: model, data, LoRA, training and evaluation settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _check_together(config: RunConfig) -> None:
    """Rules that involve more than one key."""
    d = config.data
    if d.validation_fraction + d.test_fraction >= 1:
        raise fail("data.test_fraction", f"data.validation_fraction ({d.validation_fraction}) + "
                                          f"data.test_fraction ({d.test_fraction}) must be < 1, so that "
                                          "rows are left to train on.")
    if d.recipe == "classification" and config.model.task != "sequence-classification":
        raise fail("model.task", "recipe 'classification' trains a classification head: set model.task: "
                                  f"sequence-classification (got {config.model.task!r}).")
    if config.train.class_weights is not None and d.recipe != "classification":
        raise fail("train.class_weights", f"class weights apply to data.recipe: classification (got {d.recipe!r}); "
                                           "set train.class_weights: null.")
    if d.recipe != "classification" and config.model.task == "sequence-classification":
        raise fail("data.recipe", f"model.task sequence-classification needs data.recipe: classification "
                                   f"(got {d.recipe!r}).")


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a checked :class:`RunConfig` from nested dicts (as read from YAML)."""
    config = build(RunConfig, values or {}, "")
    _check_together(config)
    return config


class _Loader(yaml.SafeLoader):
    """YAML as a config author means it: only true/false are booleans, ``1e-4`` is a number.

    YAML 1.1 (PyYAML's default) reads yes/no/on/off as booleans (``country: no`` becomes False)
    and ``1e-4`` without a dot as text.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def _read_yaml(path: Path, lines: dict[str, str], chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Values of a config file (with its ``extends`` chain merged in); `lines` gets ``key -> file, line``."""
    if not path.is_file():
        raise ConfigError(f"Config file not found: '{path}'. Pick one of the files in configs/.")
    if path.resolve() in chain:
        raise ConfigError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in chain)}).")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=_Loader)
        values = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        started = (f"; {exc.context} that starts on line {context.line + 1}"
                   if context and mark and context.line != mark.line and getattr(exc, "context", None) else "")
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}{started}).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected sections such as 'model:' and 'train:', got {values!r:.60}.")
    merged: dict[str, Any] = {}
    if "extends" in values:
        extends = str(values.pop("extends"))
        base = path.parent / extends
        if not base.is_file():
            raise ConfigError(f"{path}: 'extends: {extends}' names a file that is not found ({base}). The path is "
                              "relative to the extending file; fix it or remove the extends line.")
        merged = _read_yaml(base, lines, (*chain, path.resolve()))
    for key_node, value_node in getattr(node, "value", []):
        lines[key_node.value] = f"{path}, line {key_node.start_mark.line + 1}"
        for sub_key, _ in getattr(value_node, "value", []) if isinstance(value_node, yaml.MappingNode) else []:
            lines[f"{key_node.value}.{sub_key.value}"] = f"{path}, line {sub_key.start_mark.line + 1}"
    for section, section_values in values.items():
        if isinstance(section_values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **section_values}
        else:
            merged[section] = section_values
    return merged


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (following ``extends``) and apply ``key=value`` overrides (dotted keys)."""
    lines: dict[str, str] = {}
    values = _read_yaml(Path(path), lines)
    for item in overrides:
        key, value = _split_override(item)
        _set_dotted(values, key, value)
        lines[key] = f"--set {item}"
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        key = getattr(exc, "key", "")
        place = lines.get(key) or lines.get(key.split("[")[0]) or lines.get(key.split(".")[0])
        if place:
            raise ConfigError(f"{place}: {exc}") from None
        raise


def apply_overrides(config: RunConfig, overrides: dict[str, Any] | typing.Sequence[str]) -> RunConfig:
    """Return a copy of `config` with overrides applied, e.g. ``{"train.max_steps": 20}``.

    Used by notebooks (a dict) and the CLI (``["train.max_steps=20"]``); the result is checked
    exactly like a file.
    """
    values = config_to_dict(config)
    items = overrides.items() if isinstance(overrides, dict) else map(_split_override, overrides)
    for key, value in items:
        _set_dotted(values, key, value)
    return config_from_dict(values)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: RunConfig, path: str | Path) -> None:
    from .files import write_text

    write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"Override {item!r} must look like section.key=value, e.g. train.max_steps=20.")
    key, raw = item.split("=", 1)
    # YAML turns "20" into 20, "null" into None and "[q_proj, v_proj]" into a list.
    try:
        return key.strip(), yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        return key.strip(), raw


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    if len(parts) != 2 or parts[0] not in sections:
        hint = suggest(parts[0], sections) if parts[0] not in sections else ""
        raise ConfigError(
            f"Override key '{key}' must be section.key with section one of {', '.join(sections)}.{hint}"
        )
    values.setdefault(parts[0], {})
    if values[parts[0]] is None:
        values[parts[0]] = {}
    values[parts[0]][parts[1]] = value
