"""Predict a run's memory before you start it: weights, adapters, gradients, optimizer, activations.

Training memory is a sum of a few terms you can compute from the model's *shape* alone:

    total = weights + adapter + gradients + optimizer_state + activations + logits + overhead

Which terms are big depends on the method. Full fine-tuning pays gradients and optimizer state for
every parameter (AdamW: 4x the weights), so it is dominated by parameters. LoRA trains ~0.5% of the
parameters, so weights dominate; QLoRA then shrinks the weights ~4x. For small models and long
sequences the activations and the logits (s·b·vocab, fp32) take over, whatever the method.

Every constant below says where it comes from. The tensors are predicted within ~15% (checked
against the bytes autograd saves); a CPU process's peak RSS measured ~2x the estimate (allocator
slack, transients, loading; benchmarks/README.md), GPU peaks are not yet measured here.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from transformers import AutoConfig, PretrainedConfig

from .errors import TunebookError
from .lora import TARGET_MODULES_BY_ARCHITECTURE, UnknownTargetModule
from .models import EMBEDDED_MODELS, resolve_model

Method = Literal["full", "lora", "qlora-4bit", "lora-8bit"]
METHODS: tuple[str, ...] = ("full", "lora", "lora-8bit", "qlora-4bit")
GiB = 1024**3

# NF4 with double quantization (tunebook's QLoRA config): 4 bits per weight, plus one absmax scale
# per 64-weight block. Stored as fp32 that is 32/64 = 0.5 bit/param; double quantization stores it
# as 8 bits (8/64 = 0.125) plus one fp32 scale per 256 blocks (32/(64*256) = 0.002): 0.127 bit.
NF4_BYTES_PER_PARAM = (4 + 0.127) / 8  # = 0.516 byte
# LLM.int8: 1 byte per weight plus one fp32 scale per output row (computed exactly per layer).
INT8_BYTES_PER_PARAM = 1
INT8_ROW_SCALE_BYTES = 4
# bitsandbytes quantizes only the Linear layers inside the blocks: embeddings, lm_head, norms and
# biases stay unquantized, in the weights' dtype (tunebook.lora.apply_lora does not upcast them).
# peft keeps LoRA A/B in fp32 (autocast_adapter_dtype=True) when the base is bf16/fp16, so their
# gradients are fp32 too.
ADAPTER_BYTES = 4
# Per-layer activation bytes kept for backward, in 16-bit, measured by counting the tensors
# autograd saves (torch.autograd.graph.saved_tensors_hooks) in transformers' LlamaDecoderLayer with
# SDPA attention:  s·b·(20·h + 8·i + 4·kv_dim).  20·h: the two RMSNorms (which upcast to fp32),
# q after RoPE, the attention output, the projections' inputs; 8·i: SwiGLU's gate, up, silu(gate)
# and their product; 4·kv_dim: k and v. It is the same count as Korthikanti et al. 2022's
# 34·s·b·h (a GPT block: 4h GeLU MLP, dropout masks) done for Llama: 45.5·s·b·h for Llama-2-7B.
# With a frozen base (LoRA), the frozen projections need not keep their inputs, and the adapters'
# lora_A reuses them (tunebook.lora.keep_adapter_input_dtype stops peft's fp32 copy of each
# adapter input). Measured on SmolLM2 (bf16 base, LoRA on all 7 projections, dropout 0, bf16
# autocast, batch 8 x 440 tokens): autograd saved 2,835 MB, of which the trained positions'
# fp32 log-softmax is 312 MB; the formula's activations give 2,475 MB (-2% against the 2,523 MB
# left). LoRA dropout keeps a dropped-out 16-bit copy and a 1-byte mask of every adapted input:
# measured +1,458 MB at that shape (dropout 0.05), the formula's DROPOUT_BYTES term gives 1,508 MB.
ACT_PER_HIDDEN, ACT_PER_INTERMEDIATE, ACT_PER_KV = 20, 8, 4
DROPOUT_BYTES = 3  # per element of every adapted layer's input: 16-bit output + bool mask
# Eager attention also keeps the s x s score and softmax tensors: measured 6·a·s²·b bytes
# (Korthikanti: 5). SDPA/flash attention recomputes them in backward, so the term is 0 there.
EAGER_SCORES_BYTES = 6
# Logits s·b·vocab: the loss upcasts them to fp32 and keeps the fp32 log-softmax for backward
# (4 bytes, measured), then backward creates its fp32 gradient (4 more). For small models with
# big vocabularies (SmolLM2: 49k x 576) this is often the single biggest tensor of the step.
LOGITS_TRAIN_BYTES, LOGITS_INFER_BYTES = 8, 4
# CUDA context (~0.5 GiB), cuBLAS workspaces and caching-allocator slack. A CPU process has no
# context to pay for; the interpreter and libraries (~0.5 GiB RSS) are not counted either, so
# compare against RSS *growth* on CPU.
OVERHEAD_BYTES = {"cuda": 1 * GiB, "cpu": 0}
FIT_HEADROOM = 0.9  # "fits" means total <= 90% of the GPU: fragmentation and spikes need room


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


def _llama_shape(name: str, h: int, layers: int, i: int, heads: int, kv: int, vocab: int,
                 tied: bool, head_dim: int | None = None, extra_per_layer: int = 0) -> ModelShape:
    shape = ModelShape(0, h, layers, i, heads, kv, vocab, tied, head_dim, "llama", name)
    # Embeddings (+ an untied lm_head), two RMSNorm weights per layer and the final norm.
    embeddings = vocab * h * (1 if tied else 2)
    count = shape.quantizable_parameters + embeddings + layers * (2 * h + extra_per_layer) + h
    return ModelShape(count, h, layers, i, heads, kv, vocab, tied, head_dim, "llama", name)


# Published configs (config.json on the Hub). The counts they give are the published ones:
# 1.24B, 6.74B, 8.03B, 13.0B, 70.6B.
PRESET_SHAPES: dict[str, ModelShape] = {
    "1b": _llama_shape("Llama-3.2-1B", 2048, 16, 8192, 32, 8, 128256, tied=True),
    "7b": _llama_shape("Llama-2-7B", 4096, 32, 11008, 32, 32, 32000, tied=False),
    "8b": _llama_shape("Llama-3.1-8B", 4096, 32, 14336, 32, 8, 128256, tied=False),
    "13b": _llama_shape("Llama-2-13B", 5120, 40, 13824, 40, 40, 32000, tied=False),
    "70b": _llama_shape("Llama-3.1-70B", 8192, 80, 28672, 64, 8, 128256, tied=False),
}
_DECODERS = {"llama", "mistral", "qwen2", "gemma"}  # parameter counts checked exact for these
_ENCODERS = {"bert", "roberta"}


def shape_from_config(config: PretrainedConfig) -> ModelShape:
    """ModelShape of a Llama/Mistral/Qwen2/Gemma (decoder) or BERT/RoBERTa (encoder) config.

    Encoder counts are for the bare encoder with its pooler (AutoModel); a task head adds
    hidden_size x num_labels, which is negligible.
    """
    kind, name = config.model_type, getattr(config, "name_or_path", "") or config.model_type
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
                            head_dim if head_dim != h // a else None, extra_per_layer=bias)
    if kind in _ENCODERS:
        emb = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size + 2) * h
        per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h  # attn, MLP, 2 LayerNorms
        count = emb + L * per_layer + h * h + h  # + pooler
        return ModelShape(count, h, L, i, a, a, config.vocab_size, True, None, "bert", name)
    raise ValueError(f"shape_from_config supports model types {sorted(_DECODERS | _ENCODERS)}, "
                     f"not {kind!r}. Pick a preset ({', '.join(PRESET_SHAPES)}) or a parameter count.")


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


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory in bytes, by term."""

    method: str
    weights: int
    adapter: int
    gradients: int
    optimizer_state: int
    activations: int
    logits: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        return (self.weights + self.adapter + self.gradients + self.optimizer_state
                + self.activations + self.logits + self.kv_cache + self.overhead)

    def as_dict(self) -> dict[str, float]:
        """Every term and the total, in GiB."""
        terms = {k: v for k, v in asdict(self).items() if k != "method"}
        return {k: v / GiB for k, v in {**terms, "total": self.total}.items()}

    def breakdown(self) -> str:
        """One line per non-zero term, in GiB, biggest first, for printing before a run."""
        terms = {k: v for k, v in self.as_dict().items() if v and k != "total"}
        lines = [f"  {k:<16}{v:9.2f} GiB" for k, v in sorted(terms.items(), key=lambda kv: -kv[1])]
        return "\n".join([f"{self.method}: {self.total / GiB:.2f} GiB", *lines])


def _optimizer_bytes_per_param(optimizer: str, param_bytes: int) -> float:
    # torch AdamW keeps exp_avg and exp_avg_sq in the *parameter's* dtype (fp32 for adapters);
    # bitsandbytes' 8-bit AdamW stores both in 1 byte (+ a fp32 scale per 2048 values); plain SGD none.
    if optimizer == "adamw":
        return 2 * param_bytes
    if optimizer == "adamw-8bit":
        return 2 * (1 + 4 / 2048)
    if optimizer == "sgd":
        return 0
    raise ValueError(f"Unknown optimizer {optimizer!r}; use 'adamw', 'adamw-8bit' or 'sgd'.")


def estimate_memory(shape: ModelShape, method: Method, batch_size: int = 1, seq_len: int = 512,
                    gradient_checkpointing: bool = False, lora_r: int = 16, weight_dtype_bytes: int = 2,
                    optimizer: str = "adamw", inference: bool = False,
                    device: Literal["cuda", "cpu"] = "cuda", activation_dtype_bytes: int = 2,
                    attention: Literal["sdpa", "eager"] = "sdpa", lora_dropout: float = 0.0) -> MemoryEstimate:
    """Predict peak memory of one training step (or of a forward pass with `inference=True`).

    weight_dtype_bytes: 2 for bf16/fp16 weights (tunebook's GPU default), 4 for fp32 (its CPU default).
    Full fine-tuning: gradients and AdamW states take the weights' dtype, as PyTorch allocates them,
    so bf16 weights give 2+2+4 = 8 bytes/param ("pure bf16"; small updates can round away) and fp32
    weights give the classic mixed-precision 4+4+8 = 16 bytes/param.
    activation_dtype_bytes: 2 under bf16/fp16 compute; 4 is an fp32 upper bound (fp32 weights with
    bf16 autocast measured ~1.75x the 16-bit figure).
    lora_dropout: above 0, each adapted layer's input is also kept dropped out, with its mask.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {METHODS}.")
    s, b, n = seq_len, batch_size, shape.num_parameters
    quantized = shape.quantizable_parameters if method in ("qlora-4bit", "lora-8bit") else 0
    rest = max(n - quantized, 0)  # embeddings, lm_head, norms, biases (all of it when unquantized)
    weights = rest * weight_dtype_bytes
    overhead = OVERHEAD_BYTES[device]
    if method == "qlora-4bit":
        weights += quantized * NF4_BYTES_PER_PARAM
        # bitsandbytes dequantizes one weight at a time to the compute dtype for each matmul.
        overhead += max(d_in * d_out for _, d_in, d_out, _n in shape.linear_layers()) * 2
    elif method == "lora-8bit":
        weights += quantized * INT8_BYTES_PER_PARAM
        weights += sum(d_out * k for _, _d, d_out, k in shape.linear_layers()) * INT8_ROW_SCALE_BYTES
    adapter = shape.lora_parameters(lora_r) * ADAPTER_BYTES if method != "full" else 0

    # One decoder layer's saved activations (see ACT_* above), scaled from 16-bit.
    widths = (ACT_PER_HIDDEN * shape.hidden_size + ACT_PER_INTERMEDIATE * shape.intermediate_size
              + ACT_PER_KV * shape.kv_dim)
    per_layer = s * b * widths * activation_dtype_bytes // 2
    if attention == "eager":
        per_layer += EAGER_SCORES_BYTES * shape.num_attention_heads * s * s * b
    if lora_dropout > 0 and method != "full" and not inference:
        adapted_inputs = sum(d_in for _, d_in, _d_out, _n in shape.adapted_layers())
        per_layer += s * b * adapted_inputs * DROPOUT_BYTES
    if inference:
        # No backward: activations live one layer at a time; the KV cache keeps k and v of every layer.
        # Logits for all s positions, as an evaluation forward makes them; generate() only keeps the
        # last position's, so this term is an upper bound there.
        kv_cache = 2 * shape.num_layers * shape.kv_dim * s * b * activation_dtype_bytes
        return MemoryEstimate(method, int(weights), adapter, 0, 0, per_layer,
                              s * b * shape.vocab_size * LOGITS_INFER_BYTES, kv_cache, overhead)
    if gradient_checkpointing:
        # Keep only each layer's input; backward recomputes one layer at a time on top of them.
        activations = shape.num_layers * s * b * shape.hidden_size * activation_dtype_bytes + per_layer
    else:
        activations = shape.num_layers * per_layer
    if method == "full":
        trainable, trainable_bytes = n, weight_dtype_bytes
    else:
        trainable, trainable_bytes = adapter // ADAPTER_BYTES, ADAPTER_BYTES
    return MemoryEstimate(
        method, int(weights), adapter,
        gradients=trainable * trainable_bytes,
        optimizer_state=int(trainable * _optimizer_bytes_per_param(optimizer, trainable_bytes)),
        activations=activations, logits=s * b * shape.vocab_size * LOGITS_TRAIN_BYTES,
        kv_cache=0, overhead=overhead,
    )


def gpu_fit_table(model_names: tuple[str, ...] = ("1b", "7b", "13b", "70b"),
                  methods: tuple[str, ...] = METHODS, gpus_gib: tuple[int, ...] = (16, 24, 40, 80),
                  batch_size: int = 1, seq_len: int = 2048, gradient_checkpointing: bool = True,
                  **estimate_kwargs) -> list[dict]:
    """One row per (model, method): the estimated total and whether it fits each GPU size."""
    rows = []
    for name in model_names:
        shape = shape_from_name(name)
        for method in methods:
            est = estimate_memory(shape, method, batch_size=batch_size, seq_len=seq_len,
                                  gradient_checkpointing=gradient_checkpointing, **estimate_kwargs)
            rows.append({
                "model": name, "shape": shape.name, "params_b": shape.num_parameters / 1e9,
                "method": method, "total_gib": est.total / GiB,
                "fits": {g: est.total <= FIT_HEADROOM * g * GiB for g in gpus_gib},
                "batch_size": batch_size, "seq_len": seq_len, "gradient_checkpointing": gradient_checkpointing,
            })
    return rows


def format_table(rows: list[dict]) -> str:
    """Render gpu_fit_table's rows as text: totals in GiB and a ✓/✗ per GPU size."""
    if not rows:
        return "(no rows)"
    gpus = list(rows[0]["fits"])
    header = f"{'model':<22}{'method':<12}{'total GiB':>10}" + "".join(f"{f'{g} GiB':>8}" for g in gpus)
    lines = [header, "-" * len(header)]
    for row in rows:
        label = f"{row['model']} ({row['params_b']:.2f}B)"
        marks = "".join(f"{'✓' if row['fits'][g] else '✗':>8}" for g in gpus)
        lines.append(f"{label:<22}{row['method']:<12}{row['total_gib']:>10.1f}{marks}")
    first = rows[0]
    checkpointing = "on" if first["gradient_checkpointing"] else "off"
    lines.append(f"batch {first['batch_size']}, seq {first['seq_len']}, gradient checkpointing {checkpointing};"
                 f" ✓ = total <= {FIT_HEADROOM:.0%} of the GPU")
    return "\n".join(lines)
