"""What machine is this, and which device and number format should training use (and why)?

Every hardware decision in tunebook goes through here and comes back with its reason, so that a
run log says e.g. ``bf16: CPU supports avx512_bf16`` instead of silently picking a dtype.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch

from .errors import ConfigError

T = TypeVar("T")

# CPU flags that give bf16 matmuls a fast path (oneDNN uses them through torch autocast).
_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@dataclass(frozen=True)
class Decision(Generic[T]):
    """A choice tunebook made for you, with the reason it printed.

    `value` is what code uses (``"bf16"``, ``True``); `label` is how a log line names it
    (``"gradient checkpointing on"``), the value itself when not given.
    """

    value: T
    reason: str
    label: str | None = None

    def __str__(self) -> str:
        return f"{self.label or self.value}: {self.reason}"


def _cpuinfo(field: str) -> str | None:
    """The first CPU's `field` in /proc/cpuinfo (None where the file does not exist, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """Feature flags of this CPU (empty where /proc/cpuinfo does not exist)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ... ('' where /proc/cpuinfo does not exist)."""
    return _cpuinfo("vendor_id") or ""


def _read_int(path: str, field: str | None = None) -> int | None:
    """An integer from a /proc or /sys file: its first word, or the line `field` names ("name: value"
    in /proc/meminfo, "name value" in a cgroup's memory.stat). None where the file or field is absent."""
    try:
        with open(path) as f:
            if field is None:
                text = f.read()
            else:
                rows = (line.replace(":", " ", 1).partition(" ") for line in f)
                text = next((value for name, _, value in rows if name == field), "")
    except OSError:
        return None
    words = text.split()
    return int(words[0]) if words and words[0].isdigit() else None


# Where cgroup v2 (one unified hierarchy) and v1 (a "memory" hierarchy) keep a group's limit, usage,
# and, in memory.stat, the page cache the kernel would drop before it kills (counted in the usage).
_CGROUP_MEMORY_FILES = {
    "v2": ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
    "v1": ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def _cgroup_headroom() -> int | None:
    """The tightest (limit - usage + droppable cache) from this process's memory cgroup up to the root;
    None: no limit found. The free figure Kubernetes' eviction uses ("working set"), for the same reason.

    The group comes from /proc/self/cgroup; a container that mounts its own group as the root
    (Docker) has no such path under the mount, so only the mount's root is read there.
    """
    try:
        with open("/proc/self/cgroup") as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    headroom = None
    for entry in entries:
        if len(entry) != 3 or not (entry[1] == "" or "memory" in entry[1].split(",")):
            continue
        root, limit_name, usage_name, cache_field = _CGROUP_MEMORY_FILES["v2" if entry[1] == "" else "v1"]
        group = Path(root + entry[2])
        for folder in (group, *group.parents):  # up to the root; a missing folder reads as no limit
            limit, usage = _read_int(f"{folder}/{limit_name}"), _read_int(f"{folder}/{usage_name}")
            if limit is not None and usage is not None:  # v2's "max" (no limit) reads as None
                left = limit - usage + (_read_int(f"{folder}/memory.stat", cache_field) or 0)
                headroom = left if headroom is None else min(headroom, left)
            if str(folder) == root:
                break
    return None if headroom is None else max(headroom, 0)


def available_memory(device: str) -> tuple[int, str] | None:
    """Bytes this process can still fill on `device`, and where the figure comes from (None: unknown).

    CUDA: the free memory of this process's GPU plus what PyTorch holds cached but unused. CPU: the
    kernel's MemAvailable (free memory plus page cache it can drop), or, when tighter, the process's
    cgroup limit minus its usage (Docker, Kubernetes and Colab set one; MemAvailable there describes
    the whole host). Processes launched together on one machine (LOCAL_WORLD_SIZE, set by torchrun
    and accelerate) share the CPU's RAM.
    """
    if device == "cuda":
        free, _total = torch.cuda.mem_get_info()
        cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
        return free + cached, f"free on {torch.cuda.get_device_name()}"
    kib = _read_int("/proc/meminfo", "MemAvailable")
    if kib is None:
        return None
    available, source = kib * 1024, "MemAvailable"
    headroom = _cgroup_headroom()
    if headroom is not None and headroom < available:
        available, source = headroom, "the cgroup's memory limit"
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if processes > 1:
        available, source = available // processes, f"{source}, shared by {processes} processes"
    return available, source


def choose_device() -> Decision[str]:
    """CUDA when a GPU is visible, else CPU (Apple MPS is left to the user: bitsandbytes lacks it)."""
    if torch.cuda.is_available():
        return Decision("cuda", f"CUDA GPU found: {torch.cuda.get_device_name(0)}")
    return Decision("cpu", "no CUDA GPU visible (torch.cuda.is_available() is False)")


def choose_precision(requested: str = "auto", device: str | None = None) -> Decision[str]:
    """Pick the compute precision for training: "bf16", "fp16" or "fp32", with the reason.

    bf16 keeps fp32's range (no loss scaling) at half the bytes, so it is the first choice wherever
    the hardware runs it fast. fp16 needs loss scaling and is only picked on CUDA GPUs without bf16
    (e.g. T4, V100). On CPUs without bf16 instructions, bf16 is emulated and slower than fp32.
    """
    device = device or choose_device().value
    if requested != "auto":
        if requested == "fp16" and device != "cuda":
            raise ConfigError(
                "train.precision: 'fp16' needs a CUDA GPU, and this machine has none (the Trainer does not "
                "train in fp16 on a CPU). Set train.precision: auto, bf16 or fp32."
            )
        return Decision(requested, "asked for in the config (train.precision)")
    if device == "cuda":
        # including_emulation=False: T4/V100 'support' bf16 only by emulation, which is slow.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Decision("bf16", f"{torch.cuda.get_device_name(0)} supports bf16")
        return Decision("fp16", f"{torch.cuda.get_device_name(0)} lacks bf16; fp16 with loss scaling")
    found = sorted(_BF16_CPU_FLAGS & cpu_flags())
    if found:
        return Decision("bf16", f"CPU supports {'/'.join(found)} (bf16 autocast matmuls are fast)")
    return Decision("fp32", "CPU has no amx_bf16/avx512_bf16, so bf16 would be emulated and slower")


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_tensors_to_os(device: str, enabled: bool = True) -> Decision[bool]:
    """On a CPU under glibc, map every allocation of 1 MiB or more on its own, so that freeing it returns it.

    glibc serves large allocations with mmap, but each time such a block is freed it raises that
    threshold to the block's size (up to 32 MiB): from then on tensors below it come from the heap,
    where freed memory stays with the process and the next step's tensors, of other sizes, fit
    around it badly. A training step allocates and frees gigabytes of activations of changing
    shapes, so the resident set climbs well above what is alive at any moment. A threshold set once
    with ``mallopt`` stops the adaptation (as ``MALLOC_MMAP_THRESHOLD_`` in the environment would,
    which is left alone when set). The price is a page fault on every first touch of such a tensor:
    measured in benchmarks/README.md, peak RSS down 21-41 %, steps up to 19 % slower (``enabled`` is
    ``train.release_host_memory``). glibc has no way back to its moving threshold within a process.
    """
    if not enabled:
        return Decision(False, "train.release_host_memory is false", label="host allocator unchanged")
    if device != "cpu":
        return Decision(False, "the tensors live on the GPU", label="host allocator unchanged")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return Decision(False, "MALLOC_MMAP_THRESHOLD_ is set in the environment", label="host allocator unchanged")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return Decision(False, "not glibc (the setting is glibc's)", label="host allocator unchanged")
    try:
        done = ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    except (OSError, AttributeError):
        done = False
    if not done:
        return Decision(False, "glibc's mallopt refused the setting", label="host allocator unchanged")
    return Decision(True, f"tensors of {MMAP_THRESHOLD_BYTES >> 20} MiB or more are mapped on their own and go back "
                          "to the OS when freed (glibc's moving threshold would keep them in the heap)",
                    label="host allocator")


def sharded_training() -> str | None:
    """"fsdp" or "deepspeed-zero3" when `accelerate launch` shards the weights across ranks, else None.

    Sharded weights change how a model must be loaded: no per-rank device_map, and 4-bit weights
    stored in a float dtype (see tunebook.quantization). ZeRO-3 is transformers' own check: the
    `TrainingArguments` (built before the model, see tunebook.train) register the DeepSpeed config,
    a JSON file's stage included. FSDP has no such record until the Trainer's Accelerator exists,
    so it is read from the variable `accelerate launch` sets (transformers' `is_fsdp_enabled` reads
    the same one, but only counts runs with cpu_ram_efficient_loading).
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return "fsdp"
    if is_deepspeed_zero3_enabled():
        return "deepspeed-zero3"
    return None


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name ("bf16", "fp16" or "fp32")."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_report() -> dict[str, object]:
    """Versions, device and precision facts that explain a run's numbers; saved with each run."""
    report: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{pkg: _version(pkg) for pkg in
           ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "evaluate")},
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report.update(
            gpu_name=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda_version=torch.version.cuda,
        )
    else:
        report.update(
            cpu=cpu_name(),
            cpu_cores=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            cpu_bf16_flags=sorted(_BF16_CPU_FLAGS & cpu_flags()),
        )
    report["device"] = str(choose_device())
    report["precision"] = str(choose_precision())
    return report


def format_report(report: dict[str, object]) -> str:
    width = max(len(k) for k in report)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in report.items())
