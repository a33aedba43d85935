"""Write a transformers causal LM (weights, architecture, tokenizer, chat template) to one GGUF file.

GGUF is the single-file format of llama.cpp, Ollama and LM Studio: the weights (f16, bf16 or
quantized blocks) plus every piece of metadata those runtimes need to run the model without the
Python stack — hyperparameters, the vocabulary with its merges and special tokens, and the chat
template. Names and keys come from the ``gguf`` package (the one llama.cpp maintains):
``gguf.get_tensor_name_map`` turns ``model.layers.3.self_attn.q_proj.weight`` into
``blk.3.attn_q.weight`` and ``gguf.GGUFWriter``'s ``add_*`` methods spell the metadata keys, so no
name table is kept here.

What llama.cpp expects beyond renaming, and why:

- **q/k rows permuted (Llama, Mistral).** HF Llama's rotary embedding rotates the two *halves* of
  each head (``rotate_half``); llama.cpp's LLAMA graph rotates *adjacent pairs*. Reordering the
  rows of ``q_proj``/``k_proj`` inside each head (first half and second half interleaved) makes
  the two compute the same attention scores. Qwen2 runs llama.cpp's NEOX rope, which already
  rotates halves, so its weights go in unchanged.
- **Tied embeddings**: no ``output.weight`` tensor; llama.cpp then reuses ``token_embd``.
- **1-D tensors (norms, biases) stay f32**, as llama.cpp's own converter keeps them: they are tiny
  and rounding them buys nothing.
- **BPE pre-tokenizer name** (``tokenizer.ggml.pre``): llama.cpp splits text with a regex chosen by
  this name before applying merges, so it must match how the tokenizer that trained the model
  splits text, or prompts tokenize differently. See :func:`pre_tokenizer_name`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import TunebookError
from .log import get_logger

logger = get_logger()

# --quant choices: the tensor type of every 2-D weight, and the file type llama.cpp reports.
QUANT_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one transformers ``model_type`` maps onto a llama.cpp architecture."""

    arch: gguf.MODEL_ARCH
    permute_qk: bool  # rotary layout differs (see the module docstring)


# transformers model_type -> llama.cpp architecture. Mistral is the Llama graph in llama.cpp.
ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": ArchitectureSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "mistral": ArchitectureSpec(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "qwen2": ArchitectureSpec(gguf.MODEL_ARCH.QWEN2, permute_qk=False),
}


class UnsupportedModel(TunebookError, ValueError):
    """The model or tokenizer has a feature this exporter does not write (the message says which)."""


def architecture_spec(config) -> ArchitectureSpec:
    """The llama.cpp architecture for a transformers config; raise :class:`UnsupportedModel` otherwise."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModel(
            f"GGUF export supports the architectures {sorted(ARCHITECTURES)} (Llama family: SmolLM2, "
            f"Llama 3, Mistral; Qwen2); this model's model_type is {model_type!r}. Export a model of "
            "one of these architectures, or convert this one with llama.cpp's convert_hf_to_gguf.py."
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise UnsupportedModel(f"RoPE scaling {rope_type!r} is not written by this exporter (only plain RoPE); "
                               "convert this model with llama.cpp's convert_hf_to_gguf.py instead.")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"hidden_act={config.hidden_act!r}: llama.cpp's {model_type} graph uses SiLU.")
    if getattr(config, "mlp_bias", False):
        raise UnsupportedModel("mlp_bias=True: this exporter writes MLPs without biases.")
    if getattr(config, "use_sliding_window", False):
        raise UnsupportedModel("use_sliding_window=True is not written by this exporter.")
    return ARCHITECTURES[model_type]


def rope_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection (or bias) from HF's rotate-half to llama.cpp's pair layout.

    Within each head of ``d`` rows, HF pairs row ``i`` with row ``i + d/2``; llama.cpp pairs rows
    ``2i`` and ``2i + 1``. So row ``i`` of the first half moves to ``2i`` and row ``i`` of the
    second half to ``2i + 1``. transformers' GGUF loader applies the inverse on reading.
    """
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))


# Pre-tokenizers that are not a single Split regex, as tokenizer.json spells them -> llama.cpp's name.
_BYTE_LEVEL = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def _matches(step: dict, pattern: dict) -> bool:
    return all(step.get(key) == value for key, value in pattern.items())


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` name for a byte-level BPE tokenizer's pre-tokenizer.

    Read from how the tokenizer really splits text (its ``pre_tokenizer`` section), not from the
    model's name: SmolLM2's tokenizer as rebuilt by this repository from its GGUF splits with
    GPT-2's regex (``gpt-2``), the Hub's SmolLM2 tokenizer also splits digits (``smollm``), and a
    single Split regex (Llama 3, Qwen2) is looked up in transformers' own table of the regexes its
    GGUF loader applies per llama.cpp name, so a reload through transformers splits the same way.
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and _matches(steps[0], _BYTE_LEVEL):
        return "gpt-2"
    if len(steps) == 2 and _matches(steps[0], _DIGITS) and _matches(steps[1], _BYTE_LEVEL):
        return "smollm"
    if len(steps) == 2 and steps[0].get("type") == "Split" and _matches(steps[1], {"type": "ByteLevel",
                                                                                   "use_regex": False}):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        names = [name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split == regex]
        if names:
            return names[0]
    raise UnsupportedModel(
        f"Unknown BPE pre-tokenizer {json.dumps(pre)[:300]}: llama.cpp needs its name to split text as "
        "training did. Known here: GPT-2 ByteLevel (gpt-2), SmolLM2 (smollm), and the Split regexes of "
        f"{sorted(set(GGUF_PRE_TOKENIZER_SPLITS))}."
    )


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    """Vocabulary, token types, merges, special ids, add-BOS/EOS flags and the chat template."""
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModel("GGUF export needs a fast (tokenizer.json) tokenizer.")
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    model = tokenizer_json["model"]
    if model["type"] != "BPE" or model.get("byte_fallback") or (tokenizer_json.get("decoder") or {}).get(
            "type") != "ByteLevel":
        raise UnsupportedModel(
            f"Only byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3, Qwen2) are exported; this one is "
            f"{model['type']} with byte_fallback={model.get('byte_fallback')} (SentencePiece-style, as in "
            "Mistral 7B v0.1-v0.3 and Llama 2). Convert such models with llama.cpp's convert_hf_to_gguf.py."
        )
    n_tokens = len(tokenizer)
    if n_tokens > vocab_size:
        raise UnsupportedModel(f"The tokenizer has {n_tokens} tokens but the model's embedding only {vocab_size}.")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(n_tokens)))):
        tokens.append(token)
        if token_id in added:  # special ones are matched whole and never shown; others are plain added words
            types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    # Embedding rows beyond the tokenizer (vocabularies padded to a multiple of 64/128) still need a
    # token each: llama.cpp's own placeholder spelling, marked unused.
    for token_id in range(n_tokens, vocab_size):
        tokens.append(f"[PAD{token_id}]")
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:
        # gguf.SpecialVocab reads merges (re-spelled for llama.cpp), special token ids and the chat
        # template from a saved tokenizer folder, the files llama.cpp's converter reads too.
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    # Whether the tokenizer adds BOS/EOS by itself, measured rather than parsed from its config.
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and with_special[:1] == [
        tokenizer.bos_token_id] and plain[:1] != [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and with_special[-1:] == [
        tokenizer.eos_token_id] and plain[-1:] != [tokenizer.eos_token_id]
    special.add_to_gguf(writer, quiet=True)


def _encode(name: str, data: np.ndarray, quant: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The bytes (or floats) of one tensor in the export's type: 1-D stays f32, 2-D takes `quant`."""
    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = QUANT_TYPES[quant][0]
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        # Q8_0 stores blocks of 32 values per row; a row of another length cannot be blocked.
        logger.warning(f"{name}: rows of {data.shape[-1]} values are not a multiple of 32; stored as f16")
        qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16 and np.abs(data).max() > _F16_MAX:
        raise ValueError(f"{name} has values up to {np.abs(data).max():.3g}, beyond f16's {_F16_MAX:.0f}; "
                         "export with --quant bf16 (same range as fp32) instead.")
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
               quant: str = "f16", name: str | None = None, description: str | None = None) -> Path:
    """Write `model` (full precision, adapters merged) and `tokenizer` to the GGUF file `path`.

    quant: "f16", "bf16" or "q8_0" for every 2-D weight (1-D norms and biases stay f32).
    name/description: ``general.name`` / ``general.description`` shown by llama.cpp and Ollama.
    Written to a temporary file next to `path` and renamed into place (a crash leaves no half file).
    """
    if quant not in QUANT_TYPES:
        raise ValueError(f"Unknown quant {quant!r}; use one of {sorted(QUANT_TYPES)}.")
    config = model.config
    spec = architecture_spec(config)
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[spec.arch])
    writer.add_type(gguf.GGUFType.MODEL)
    # Never exactly "mistral": transformers 5.24 then reads the file as a "mistral" architecture that
    # its GGUF reader cannot map (llama.cpp runs Mistral as "llama"), and the reload fails.
    writer.add_name(name or Path(getattr(config, "name_or_path", "") or "").name or f"tunebook {config.model_type}")
    if description:
        writer.add_description(description)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)  # < head_count: grouped-query attention
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim * n_heads != config.hidden_size:  # llama.cpp assumes hidden/heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(QUANT_TYPES[quant][1])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, config.vocab_size)

    names = gguf.get_tensor_name_map(spec.arch, n_layers)
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight.data_ptr() == embedding.data_ptr()
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name.endswith("lm_head.weight"):
            continue  # tied: llama.cpp reads token_embd for the output projection when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UnsupportedModel(f"Tensor {hf_name!r} has no GGUF name for {spec.arch.name}; this model has "
                                   f"parts the {config.model_type} graph of llama.cpp does not.")
        data = tensor.detach().to(torch.float32)
        if spec.permute_qk and ".q_proj." in hf_name:
            data = rope_permute(data, n_heads)
        elif spec.permute_qk and ".k_proj." in hf_name:
            data = rope_permute(data, n_kv_heads)
        encoded, qtype = _encode(gguf_name, data.cpu().numpy(), quant)
        writer.add_tensor(gguf_name, encoded, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(f"wrote {path.name}: {spec.arch.name.lower()} architecture, tensors {counts}, "
                f"{path.stat().st_size / 2**20:.1f} MiB")
    return path
