"""Run configuration: one dataclass per pipeline stage, loaded from YAML.

A run is described by a YAML file in ``configs/`` with one section per stage::

    model: {name: smollm2-135m-instruct, quantization: null}
    data:  {path: data/extraction, recipe: instruction, ...}
    lora:  {r: 16, alpha: 32, ...}
    train: {max_steps: 150, ...}
    eval:  {max_new_tokens: 64, ...}

Why dataclasses and not free dicts: a typo such as ``lerning_rate`` would otherwise be ignored
silently and the run would use the default. Here every unknown key is an error that names the
nearest valid key, and every value is checked against the field's type before any model loads.
Overrides use dotted keys (``train.learning_rate=1e-4``) from the CLI (``--set``) or a notebook
(:func:`apply_overrides`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and how to fix it."""


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

    # A local file/folder (JSONL, JSON, CSV, Parquet) or a Hub dataset id.
    path: str = "data/extraction"
    # "instruction": instruction/input/output; "chat": a messages column; "classification": text/label.
    recipe: Literal["instruction", "chat", "classification"] = "instruction"
    # Role -> column name in your files, e.g. {input: sentence, output: output}. Roles not given
    # keep their own name as the column name.
    columns: dict[str, str] = field(default_factory=dict)
    # A fixed instruction used when the data has no instruction column (e.g. the extraction task).
    instruction: str | None = None
    # Optional system prompt; None keeps the chat template's own default.
    system_prompt: str | None = None
    # Classification only: the label names, in id order. Empty means "read them from the data".
    labels: list[str] = field(default_factory=list)
    # Tokens per example. None: no limit, every example is kept whole (the length histogram marks
    # the length that fits the longest). A number drops longer examples and counts them; answers
    # are never cut silently.
    max_length: int | None = None
    # Used only when the data has no validation/test split of its own.
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    # Cap the number of training examples (quick experiments and smoke tests). None = all.
    max_train_examples: int | None = None


@dataclass
class LoraConfigSettings:
    """The LoRA knobs. See `tunebook.lora` for what each one does."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    # "auto" picks the attention and MLP projections for the architecture; or list names.
    target_modules: list[str] | str = "auto"
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping for `tunebook.train`."""

    output_dir: str = "runs/default"
    max_steps: int = 150
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    # Gradient clipping; also what DeepSpeed configs take as their gradient_clipping.
    max_grad_norm: float = 1.0
    # "auto" picks bf16 where the device supports it, else fp16 on CUDA, else fp32 (printed).
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # Trades ~30% more compute for much less activation memory; needed for 7B models on one GPU.
    # "auto": on for 7B-class models (>= 5B parameters), off below; the decision is printed.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # Batches similar lengths together so that dynamic padding wastes little compute.
    group_by_length: bool = True
    # None: dynamic padding (to the longest example in each batch). An int pads every causal-LM
    # batch to that fixed length, the usual tutorial recipe (benchmarks/ measures what it costs).
    pad_to_length: int | None = None
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int = 2
    # "auto": paged 8-bit AdamW for QLoRA on CUDA, AdamW otherwise.
    optim: Literal["auto", "adamw_torch", "adamw_torch_fused", "paged_adamw_8bit", "adamw_8bit", "sgd"] = "auto"
    seed: int = 42
    max_eval_examples: int | None = 200


@dataclass
class EvalConfig:
    """Task evaluation (generation or classification) on a held-out split."""

    split: str = "test"
    max_examples: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 96


@dataclass
class RunConfig:
    """A whole run: model, data, LoRA, training and evaluation settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfigSettings = field(default_factory=LoraConfigSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Return `value` if it fits `hint` (ints are accepted for floats), else raise ConfigError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not fit {_type_name(hint)}.")
    if origin is Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}.")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}.")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; it is a float to anyone writing a config.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}.")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and ill-typed values."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(
                f"Unknown config key '{path}'.{_suggest(key, names)} "
                f"Valid keys{' in ' + where if where else ''}: {', '.join(names)}."
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)
        else:
            kwargs[key] = _check_type(value, hint, path)
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a checked :class:`RunConfig` from nested dicts (as read from YAML)."""
    return _build(RunConfig, values or {}, "")


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config and apply ``key=value`` overrides (dotted keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: '{path}'. Pick one of the files in configs/.")
    values = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        _set_dotted(values, *_split_override(item))
    return config_from_dict(values)


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
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"Override {item!r} must look like section.key=value, e.g. train.max_steps=20.")
    key, raw = item.split("=", 1)
    # YAML parsing turns "20" into 20, "null" into None and "[q_proj, v_proj]" into a list.
    return key.strip(), yaml.safe_load(raw)


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    if len(parts) != 2 or parts[0] not in sections:
        hint = _suggest(parts[0], sections) if parts[0] not in sections else ""
        raise ConfigError(
            f"Override key '{key}' must be section.key with section one of {', '.join(sections)}.{hint}"
        )
    values.setdefault(parts[0], {})
    if values[parts[0]] is None:
        values[parts[0]] = {}
    values[parts[0]][parts[1]] = value
