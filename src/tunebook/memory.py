"""Predict a run's memory before you start it: weights, adapters, gradients, optimizer, activations.

Training memory is a sum of a few terms you can compute from the model's *shape* alone:

    total = weights + adapter + gradients + optimizer_state + activations + logits + overhead

Which terms are big depends on the method. Full fine-tuning pays gradients and optimizer state for
every parameter (AdamW: 4x the weights), so it is dominated by parameters. LoRA trains ~0.5% of the
parameters, so weights dominate; QLoRA then shrinks the weights ~4x. For small models and long
sequences the activations and the logits (s·b·vocab, fp32) take over, whatever the method.

Every constant below says where it comes from. The tensors are predicted within ~15% (checked
against the bytes autograd saves). Where the step sets the peak (long batches), a CPU process's
resident set grew by 0.99-1.12x the estimate since the chunked loss and the host allocator setting
(~2x before; benchmarks/README.md); at short batches loading sets the peak instead. GPU peaks are
not yet measured here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from .shapes import (  # noqa: F401 (the estimator's API: a shape in, an estimate out)
    PRESET_SHAPES,
    ModelShape,
    UnknownModelName,
    shape_from_config,
    shape_from_name,
    shape_from_parameter_count,
)

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
# measured +1,458 MB at that shape (dropout 0.05), the formula's dropout term gives 1,508 MB.
ACT_PER_HIDDEN, ACT_PER_INTERMEDIATE, ACT_PER_KV = 20, 8, 4
# tunebook trains Llama-style decoders with tunebook.activations: each RMSNorm keeps its 16-bit
# input instead of an fp32 copy (20·h -> 16·h) and SwiGLU does not keep silu(gate) (8·i -> 6·i).
# Measured at SmolLM2 batch 8 x 470: 2,636 -> 2,057 MiB saved by the 30 layers; formula 2,066 MiB.
# Gemma's are not swapped (ModelShape.model_type): its MLP's forward is Llama's, but with GELU, so
# it keeps the plain 8·i, as does any decoder whose activation is not SiLU (ModelShape.lean_mlp);
# its RMSNorm keeps the plain 20·h with a frozen weight (LoRA, QLoRA). Full fine-tuning trains the
# norm's weight, and Gemma's (1 + weight), computed in fp32, then also keeps the fp32 normalised
# output: 8·h bytes a norm where Llama's keeps 6·h, 24·h. Counted with saved_tensors_hooks on a
# bf16 Gemma and on a Llama running GELU (tests/test_memory.py).
GEMMA_FULL_ACT_PER_HIDDEN = 24
LEAN_ACT_PER_HIDDEN, LEAN_ACT_PER_INTERMEDIATE = 16, 6
DROPOUT_MASK_BYTES = 1  # per element of every adapted layer's input, beside its dropped-out copy (bool mask)
# Eager attention also keeps the s x s score and softmax tensors: measured 6·a·s²·b bytes
# (Korthikanti: 5). SDPA/flash attention recomputes them in backward, so the term is 0 there.
EAGER_SCORES_BYTES = 6
# Logits s·b·vocab. transformers' loss upcasts them to fp32 and keeps the fp32 log-softmax for
# backward, whose backward then makes two more fp32 tensors of that size; tunebook trains causal
# LMs with tunebook.activations' chunked loss instead, which keeps the logits in the compute dtype
# and makes one gradient of the same size: 2 x the activation bytes per value (bf16: 4). Counted at
# every position, an upper bound: tunebook forms logits only from the first trained position on.
# For small models with big vocabularies (SmolLM2: 49k x 576) this is often the biggest tensor.
LOGITS_TRAIN_VALUES, LOGITS_INFER_BYTES = 2, 4
# A classification head (tunebook's encoders, or a decoder with task sequence-classification) makes
# num_labels scores a row: no vocabulary-sized term.
# CUDA context (~0.5 GiB), cuBLAS workspaces and caching-allocator slack. A CPU process has no
# context to pay for; the interpreter and libraries (~0.5 GiB RSS) are not counted either, so
# compare against RSS *growth* on CPU.
OVERHEAD_BYTES = {"cuda": 1 * GiB, "cpu": 0}
FIT_HEADROOM = 0.9  # "fits" means total <= 90% of the GPU: fragmentation and spikes need room


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

    @property
    def beyond_loaded_weights(self) -> int:
        """What a step adds once the weights (and on CUDA the context) are in memory: what
        train.gradient_checkpointing: auto weighs against the free memory."""
        return self.total - self.weights - self.overhead

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
                    attention: Literal["sdpa", "eager"] = "sdpa", lora_dropout: float = 0.0,
                    target_modules: list[str] | str = "auto", vocab_logits: bool | None = None) -> MemoryEstimate:
    """Predict peak memory of one training step (or of a forward pass with `inference=True`).

    weight_dtype_bytes: 2 for bf16/fp16 weights (tunebook's GPU default), 4 for fp32 (its CPU default).
    Full fine-tuning: gradients and AdamW states take the weights' dtype, as PyTorch allocates them,
    so bf16 weights give 2+2+4 = 8 bytes/param ("pure bf16"; small updates can round away) and fp32
    weights give the classic mixed-precision 4+4+8 = 16 bytes/param.
    activation_dtype_bytes: 2 under bf16/fp16 compute; 4 is an fp32 upper bound (fp32 weights with
    bf16 autocast measured ~1.75x the 16-bit figure).
    vocab_logits: whether the head forms logits over the vocabulary (a causal LM) rather than a few
    class scores; None: decoders do, encoders do not.
    target_modules: the Linears LoRA adapts (lora.target_modules; "auto": tunebook.lora's default).
    lora_dropout: above 0, each adapted layer's input is also kept dropped out, with a 1-byte mask (CUDA's
    fused dropout, and tunebook.activations.LeanDropout on a CPU).
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {METHODS}.")
    s, b, n = seq_len, batch_size, shape.num_parameters
    if vocab_logits is None:
        vocab_logits = shape.architecture != "bert"
    vocab = shape.vocab_size if vocab_logits else 0
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
    adapter = shape.lora_parameters(lora_r, target_modules) * ADAPTER_BYTES if method != "full" else 0

    # One decoder layer's saved activations (see ACT_* above), scaled from 16-bit.
    if inference or shape.architecture != "llama":
        per_hidden, per_intermediate = ACT_PER_HIDDEN, ACT_PER_INTERMEDIATE
    else:
        if shape.model_type == "gemma":
            per_hidden = GEMMA_FULL_ACT_PER_HIDDEN if method == "full" else ACT_PER_HIDDEN
        else:
            per_hidden = LEAN_ACT_PER_HIDDEN
        per_intermediate = LEAN_ACT_PER_INTERMEDIATE if shape.lean_mlp else ACT_PER_INTERMEDIATE
    widths = per_hidden * shape.hidden_size + per_intermediate * shape.intermediate_size + ACT_PER_KV * shape.kv_dim
    per_layer = s * b * widths * activation_dtype_bytes // 2
    if attention == "eager":
        per_layer += EAGER_SCORES_BYTES * shape.num_attention_heads * s * s * b
    if lora_dropout > 0 and method != "full" and not inference:
        adapted_inputs = sum(d_in for _, d_in, _d_out, _n in shape.adapted_layers(target_modules))
        per_layer += s * b * adapted_inputs * (activation_dtype_bytes + DROPOUT_MASK_BYTES)
    if inference:
        # No backward: activations live one layer at a time; the KV cache keeps k and v of every layer.
        # Logits for all s positions, as an evaluation forward makes them; generate() only keeps the
        # last position's, so this term is an upper bound there.
        kv_cache = 2 * shape.num_layers * shape.kv_dim * s * b * activation_dtype_bytes
        return MemoryEstimate(method, int(weights), adapter, 0, 0, per_layer,
                              s * b * vocab * LOGITS_INFER_BYTES, kv_cache, overhead)
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
        activations=activations, logits=s * b * vocab * LOGITS_TRAIN_VALUES * activation_dtype_bytes,
        kv_cache=0, overhead=overhead,
    )


@dataclass(frozen=True)
class StepFit:
    """A training step on its longest batch, estimated with and without gradient checkpointing, against
    the memory free once the weights are loaded (what train.gradient_checkpointing: auto weighs)."""

    rows: int
    width: int  # padded tokens a row
    without_checkpointing: int  # bytes the step adds to the loaded weights
    with_checkpointing: int
    available: int
    source: str  # where `available` was read


def longest_step_fit(shape: ModelShape, method: Method, rows: int, width: int, available: tuple[int, str],
                     **estimate_kwargs) -> StepFit:
    """Estimate the longest batch's step both ways. The weights (and on CUDA the context) are resident
    when this is asked, so they are left out; the 1 GiB CUDA overhead's allocator slack goes with it."""
    def added(checkpointing: bool) -> int:
        return estimate_memory(shape, method, batch_size=rows, seq_len=width, gradient_checkpointing=checkpointing,
                               **estimate_kwargs).beyond_loaded_weights
    return StepFit(rows, width, added(False), added(True), *available)


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
