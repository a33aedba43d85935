"""4-bit (NF4, QLoRA) and 8-bit (LLM.int8) weight loading through bitsandbytes.

Why quantize the *frozen* base: LoRA trains only small adapter matrices, so the base weights are
read but never updated. Storing them in 4 bits (NF4, a data type whose 16 levels match the normal
distribution of trained weights) cuts weight memory ~4x versus bf16; double quantization also
quantizes the per-block scales (saves ~0.4 bit/parameter). Matmuls dequantize blocks on the fly
to the *compute dtype*, so that dtype decides speed and numerics.

bitsandbytes >= 0.48 runs both modes on CUDA GPUs and on CPU; where it cannot run, the functions
here raise :class:`QuantizationUnavailable` saying why and what to do.
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings

import torch
from transformers import BitsAndBytesConfig

from .environment import Decision, choose_device, choose_precision, precision_dtype, sharded_training
from .errors import TunebookError
from .log import get_logger

logger = get_logger()

QUANTIZATION_MODES = ("4bit", "8bit")


def quiet_bitsandbytes() -> None:
    """Silence two bitsandbytes messages that tell a tunebook user nothing; called when quantizing.

    8-bit matmuls on CPU warn on every call that inputs are cast to fp16 (one line per layer per
    step drowns the progress bar); bitsandbytes logs at import that optional CPU kernels from the
    `kernels` package (a Hub download) are absent, and uses its built-in CPU path instead.
    """
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class QuantizationUnavailable(TunebookError, RuntimeError):
    """4/8-bit loading was asked for where it cannot run."""


def check_quantization_available(mode: str) -> None:
    """Raise a clear error when `mode` cannot run here; return None when it can."""
    if mode not in QUANTIZATION_MODES:
        raise ValueError(
            f"Unknown quantization {mode!r}. Use one of {QUANTIZATION_MODES} or null for full precision."
        )
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        raise QuantizationUnavailable(
            f"quantization={mode!r} needs bitsandbytes, which is not installed. "
            "Run `pip install bitsandbytes` (>=0.48 for CPU support), or set model.quantization: null."
        ) from None
    major, minor = (int(p) for p in version.split(".")[:2])
    device = choose_device().value
    if device == "cpu" and (major, minor) < (0, 48):
        raise QuantizationUnavailable(
            f"bitsandbytes {version} runs 4/8-bit only on CUDA GPUs; this machine has none. "
            "Upgrade to bitsandbytes>=0.48 for CPU support, use a GPU, or set model.quantization: null."
        )
    quiet_bitsandbytes()
    try:
        import bitsandbytes  # noqa: F401  (import fails where no backend library matches)
    except Exception as exc:  # bitsandbytes raises several types when its native library is missing
        raise QuantizationUnavailable(
            f"bitsandbytes {version} is installed but cannot load a backend on this machine "
            f"({type(exc).__name__}: {exc}). Use model.quantization: null, or see "
            "https://huggingface.co/docs/bitsandbytes/installation."
        ) from None


def choose_compute_dtype(device: str | None = None) -> tuple[torch.dtype, Decision[torch.dtype]]:
    """dtype the quantized layers compute in: the training precision's dtype (bf16 > fp16 > fp32)."""
    precision = choose_precision("auto", device)
    dtype = precision_dtype(precision.value)
    return dtype, Decision(dtype, f"4-bit compute dtype; {precision.reason}", str(dtype).replace("torch.", ""))


def make_quantization_config(mode: str, verbose: bool = True,
                             compute_dtype: torch.dtype | None = None) -> BitsAndBytesConfig:
    """A BitsAndBytesConfig for `mode` ("4bit" or "8bit") suited to this device and launch.

    Under FSDP or DeepSpeed ZeRO-3 the packed 4-bit weights are stored in the compute dtype instead
    of uint8 (`bnb_4bit_quant_storage`): those engines shard only floating-point tensors of one
    dtype per unit, so the quantized Linears must look like the bf16 rest of the model. The bytes
    are the same; only their label changes.
    """
    check_quantization_available(mode)
    sharding = sharded_training()
    if mode == "8bit" and sharding:
        raise QuantizationUnavailable(
            f"quantization='8bit' cannot be sharded by {sharding}: LLM.int8 weights are integers, and "
            "FSDP/ZeRO-3 shard only floating-point tensors. Use model.quantization: 4bit (stored in a "
            "float dtype when sharded), or DDP (configs/accelerate/multi_gpu_ddp.yaml) for 8-bit.")
    if mode == "8bit":
        # LLM.int8: int8 weights, outlier features (|x| > threshold) kept in fp16.
        return BitsAndBytesConfig(load_in_8bit=True)
    if compute_dtype is None:
        compute_dtype, decision = choose_compute_dtype()
    else:
        decision = Decision(compute_dtype, "4-bit compute dtype: the dtype the model is loaded in",
                            str(compute_dtype).replace("torch.", ""))
    if verbose:
        logger.info(str(decision))
    storage = torch.uint8
    if sharding:
        # The same dtype as the unquantized rest of the model (load_model passes it as `dtype`).
        storage = compute_dtype
        if verbose:
            name = str(storage).replace("torch.", "")
            logger.info(str(Decision(storage, f"{sharding} shards one float dtype per unit", f"4-bit storage {name}")))
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=storage,
    )


def is_quantized(model: torch.nn.Module) -> bool:
    """True when the model was loaded with 4-bit or 8-bit bitsandbytes weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))
