"""Model shapes: the few numbers (width, depth, heads, vocabulary, which Linears exist) that decide memory.

A shape comes from a model's config (an embedded model, a local folder or a Hub id), a preset of
published configs ("7b") or a bare parameter count ("3e9"); :mod:`tunebook.memory` turns a shape
and a training setup into a memory estimate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from .errors import TunebookError
from .lora import TARGET_MODULES_BY_ARCHITECTURE, UnknownTargetModule
from .models import EMBEDDED_MODELS, resolve_model


class UnknownModelName(TunebookError, ValueError):
    """shape_from_name could not turn a name into a model shape; the message lists what works."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers that decide memory. `num_parameters` counts every parameter (tied once)."""

    num_parameters: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    architecture: str = "llama"  # "llama" (decoder, SwiGLU) or "bert" (encoder): which Linears exist
    name: str = ""
    # The config's model_type and MLP activation. tunebook.activations swaps in leaner RMSNorm and
    # SwiGLU modules where a model's are exactly Llama's (Mistral's and Qwen2's are): the RMSNorm by
    # its code (Gemma's is other code), the MLP by its code *and* a SiLU activation (Gemma's MLP is
    # Llama's forward running GELU, and a Llama config may name another activation too).
    model_type: str = "llama"
    hidden_act: str = "silu"

    @property
    def lean_mlp(self) -> bool:
        """Whether tunebook.activations' SwiGLU replaces this decoder's MLP (it needs SiLU)."""
        return self.architecture == "llama" and self.hidden_act in SILU_ACTIVATIONS

    @property
    def kv_dim(self) -> int:
        """Width of k and v: smaller than hidden_size under grouped-query attention (GQA)."""
        return self.num_kv_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    def linear_layers(self) -> list[tuple[str, int, int, int]]:
        """(short name, d_in, d_out, how many) of every Linear inside the model, heads excluded."""
        h, i, L = self.hidden_size, self.intermediate_size, self.num_layers
        if self.architecture == "bert":  # "dense" names four different layers (BERT's naming)
            return [("query", h, h, L), ("key", h, h, L), ("value", h, h, L), ("dense", h, h, L),
                    ("dense", h, i, L), ("dense", i, h, L), ("dense", h, h, 1)]  # last: pooler
        q = self.num_attention_heads * (self.head_dim or h // self.num_attention_heads)
        return [("q_proj", h, q, L), ("k_proj", h, self.kv_dim, L), ("v_proj", h, self.kv_dim, L),
                ("o_proj", q, h, L), ("gate_proj", h, i, L), ("up_proj", h, i, L), ("down_proj", i, h, L)]

    @property
    def quantizable_parameters(self) -> int:
        """Weights bitsandbytes quantizes: the Linears inside the blocks (not embeddings/lm_head)."""
        return sum(d_in * d_out * n for _, d_in, d_out, n in self.linear_layers())

    def adapted_layers(self, target_modules: list[str] | str = "auto") -> list[tuple[str, int, int, int]]:
        """The `linear_layers` LoRA adapts for `target_modules` ("auto": tunebook.lora's default)."""
        layers = self.linear_layers()
        if target_modules == "auto":  # the same default as tunebook.lora.resolve_target_modules
            target_modules = TARGET_MODULES_BY_ARCHITECTURE[self.architecture]
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
        missing = sorted(set(targets) - {name for name, *_ in layers})
        if missing:
            raise UnknownTargetModule(f"{missing} are not Linear layers of a {self.architecture} model.")
        return [layer for layer in layers if layer[0] in targets]

    def lora_parameters(self, r: int = 16, target_modules: list[str] | str = "auto") -> int:
        """Adapter size: each adapted Linear (d_in -> d_out) gets A (r x d_in) and B (d_out x r)."""
        return sum(r * (d_in + d_out) * n for _, d_in, d_out, n in self.adapted_layers(target_modules))


def _llama_shape(name: str, h: int, layers: int, i: int, heads: int, kv: int, vocab: int, tied: bool,
                 head_dim: int | None = None, extra_per_layer: int = 0, model_type: str = "llama",
                 hidden_act: str = "silu") -> ModelShape:
    shape = ModelShape(0, h, layers, i, heads, kv, vocab, tied, head_dim, "llama", name)
    # Embeddings (+ an untied lm_head), two RMSNorm weights per layer and the final norm.
    embeddings = vocab * h * (1 if tied else 2)
    count = shape.quantizable_parameters + embeddings + layers * (2 * h + extra_per_layer) + h
    return ModelShape(count, h, layers, i, heads, kv, vocab, tied, head_dim, "llama", name, model_type, hidden_act)


# Published configs (config.json on the Hub). The counts they give are the published ones:
# 1.24B, 6.74B, 8.03B, 13.0B, 70.6B.
PRESET_SHAPES: dict[str, ModelShape] = {
    "1b": _llama_shape("Llama-3.2-1B", 2048, 16, 8192, 32, 8, 128256, tied=True),
    "7b": _llama_shape("Llama-2-7B", 4096, 32, 11008, 32, 32, 32000, tied=False),
    "8b": _llama_shape("Llama-3.1-8B", 4096, 32, 14336, 32, 8, 128256, tied=False),
    "13b": _llama_shape("Llama-2-13B", 5120, 40, 13824, 40, 40, 32000, tied=False),
    "70b": _llama_shape("Llama-3.1-70B", 8192, 80, 28672, 64, 8, 128256, tied=False),
}
# The names under which transformers' ACT2FN gives SiLU (SiLUActivation, nn.SiLU).
SILU_ACTIVATIONS = ("silu", "swish")
_DECODERS = {"llama", "mistral", "qwen2", "gemma"}  # parameter counts checked exact for these
_ENCODERS = {"bert", "roberta"}


def shape_from_config(config: PretrainedConfig) -> ModelShape:
    """ModelShape of a Llama/Mistral/Qwen2/Gemma (decoder) or BERT/RoBERTa (encoder) config.

    Encoder counts are for the bare encoder with its pooler (AutoModel); a task head adds
    hidden_size x num_labels, which is negligible.
    """
    kind, name = config.model_type, getattr(config, "name_or_path", "") or config.model_type
    if kind not in _DECODERS | _ENCODERS:  # before reading fields other architectures name differently
        raise ValueError(f"shape_from_config supports model types {sorted(_DECODERS | _ENCODERS)}, "
                         f"not {kind!r}. Pick a preset ({', '.join(PRESET_SHAPES)}) or a parameter count.")
    h, L, i = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    a = config.num_attention_heads
    if kind in _DECODERS:
        kv = getattr(config, "num_key_value_heads", None) or a
        head_dim = getattr(config, "head_dim", None) or h // a
        # Biases: Qwen2 has them on q/k/v; Llama has optional ones (attention_bias, mlp_bias).
        bias = (a + 2 * kv) * head_dim if kind == "qwen2" else 0
        bias += ((a + 2 * kv) * head_dim + h) if getattr(config, "attention_bias", False) else 0
        bias += (2 * i + h) if getattr(config, "mlp_bias", False) else 0
        return _llama_shape(name, h, L, i, a, kv, config.vocab_size, bool(config.tie_word_embeddings),
                            head_dim if head_dim != h // a else None, extra_per_layer=bias,
                            model_type=kind, hidden_act=config.hidden_act)
    # An encoder (_ENCODERS).
    emb = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size + 2) * h
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h  # attn, MLP, 2 LayerNorms
    count = emb + L * per_layer + h * h + h  # + pooler
    return ModelShape(count, h, L, i, a, a, config.vocab_size, True, None, "bert", name, kind, config.hidden_act)


_COUNT = re.compile(r"^(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbt]?)$")
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def shape_from_parameter_count(num_parameters: int, vocab_size: int = 32000) -> ModelShape:
    """A generic Llama-2-like shape for a bare size: head_dim 128, width = 128 x depth (as in
    Llama-2-7B/13B), MLP width 8/3·h, untied 32k vocabulary. Dims are approximate; the count is yours.
    """
    body = max(num_parameters - 2 * vocab_size * 512, 1)  # rough first guess of the non-embedding part
    h = max(256, 256 * round((body * 128 / 12) ** (1 / 3) / 256))  # 12·h²·L with L = h/128
    layers = max(1, round((num_parameters - 2 * vocab_size * h) / (12 * h * h)))
    i = 256 * math.ceil(8 * h / 3 / 256)
    base = _llama_shape(f"~{num_parameters / 1e9:.3g}B", h, layers, i, h // 128, h // 128, vocab_size, False)
    return replace(base, num_parameters=num_parameters)


def shape_from_name(name: str) -> ModelShape:
    """Resolve a preset ("7b"), an embedded model or local folder, a count ("3e9", "350M"), or a Hub id."""
    key = name.strip().lower()
    if key in PRESET_SHAPES:
        return PRESET_SHAPES[key]
    if name in EMBEDDED_MODELS or Path(name).expanduser().is_dir():
        return replace(shape_from_config(AutoConfig.from_pretrained(resolve_model(name))), name=name)
    if match := _COUNT.match(key):
        return shape_from_parameter_count(int(float(match[1]) * _SUFFIX[match[2]]))
    help_text = (f"Use a preset ({', '.join(PRESET_SHAPES)}), an embedded model "
                 f"({', '.join(EMBEDDED_MODELS)}), a local folder, a parameter count such as '3e9' or "
                 "'350M', or a Hub id 'owner/name'.")
    if "/" in name:  # only names shaped like Hub ids go online: offline, a miss costs ~25 s of retries
        try:
            return shape_from_config(AutoConfig.from_pretrained(name))
        except OSError as exc:
            raise UnknownModelName(f"Could not read a config for {name!r} ({str(exc).splitlines()[0]}). "
                                   + help_text) from None
    raise UnknownModelName(f"Unknown model name {name!r}. " + help_text)
