"""Where does a training step's time go? The torch profiler over tunebook's own step, by category.

    python benchmarks/profile_step.py [--config CONFIG] [--steps 3] [--batch-size 8] [--set k=v ...] [--json OUT]
    python benchmarks/profile_step.py --compile      # the same step through torch.compile (a trial)
    python benchmarks/profile_step.py --attention eager   # transformers' eager attention instead of SDPA

Builds the step exactly as `tunebook train` does (same data, tokenizer, model dtype, LoRA, collator
with the loss on trained positions, bf16 autocast where the device runs it fast, AdamW), warms it
up, then profiles `--steps` steps and sorts every operator's own time into categories:

    GEMM           matrix multiplies (mm, addmm, bmm, linear's matmul): the compute floor's share
    attention      scaled-dot-product attention, forward and backward
    loss           log-softmax and NLL over the vocabulary, forward and backward
    elementwise    norms, activations, adds and multiplies, their backward
    casts/copies   dtype casts and copies (autocast, peft's input casts, contiguous)
    optimizer      AdamW's update of the adapter (timed around optimizer.step)
    data           collating the batch (timed around the collator)
    other          everything else (allocation, views, autograd bookkeeping)

Works on CUDA too (CUDA kernel time is then attributed the same way). Run it on a quiet machine:
on a busy one every category stretches, small operators most.

``--compile`` wraps the model in ``torch.compile`` (what ``TrainingArguments(torch_compile=True)``
does) and reports the compile time (the warm-up steps) beside the steady step, so the trade-off
over a run can be read off: compile seconds + steps x s/step. One batch shape is the best case
for the compiler; real batches vary in length and each new length can recompile.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))

CATEGORIES = [
    ("attention", re.compile(r"scaled_dot_product|flash_attention|_efficient_attention|softmax_backward_data.*attn")),
    ("loss", re.compile(r"log_softmax|nll_loss|cross_entropy")),
    ("GEMM", re.compile(r"^aten::(mm|addmm|bmm|baddbmm|matmul|linear|_mm)")),
    ("casts/copies", re.compile(r"^aten::(copy_|_to_copy|to|contiguous|clone|_copy_from)")),
    ("elementwise", re.compile(r"^aten::(mul|add|sub|div|pow|rsqrt|mean|silu|neg|cat|where|sigmoid|sum|exp|cos|sin|"
                               r"fill_|zero_|embedding|masked_fill|add_|mul_|threshold|gelu|tanh|native_layer_norm)"
                               r"|Backward|_backward")),
]


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def build_step(config_path: str, overrides: list[str], batch_size: int):
    """Model, optimizer and one batch, prepared the way tunebook.train prepares them."""
    from transformers import TrainingArguments

    from tunebook.config import load_config
    from tunebook.decisions import choose_trained_positions_loss, hardware_decisions
    from tunebook.environment import choose_device, choose_precision
    from tunebook.formatting import completion_collator
    from tunebook.models import load_tokenizer
    from tunebook.prepare import prepare_tokenized
    from tunebook.train import build_model

    config = load_config(config_path, [*overrides, f"train.per_device_batch_size={batch_size}"])
    tokenizer = load_tokenizer(config.model.name)
    train = prepare_tokenized(config, tokenizer).tokenized["train"]
    decisions = hardware_decisions(config)
    model = build_model(config, decisions, None)
    model.train()
    args = TrainingArguments(output_dir="/tmp/profile-step", use_cpu=not torch.cuda.is_available(), report_to="none")
    collator = completion_collator(tokenizer, config.train.pad_to_length,
                                   choose_trained_positions_loss(model, args).value)
    # A batch of typical length: the examples around the median, as length grouping forms them.
    order = sorted(range(len(train)), key=lambda i: train[i]["length"])
    middle = order[len(order) // 2 - batch_size // 2:][:batch_size]
    features = [{k: train[i][k] for k in ("input_ids", "labels")} for i in middle]
    device = choose_device().value
    precision = choose_precision(config.train.precision, device).value
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.learning_rate)
    return model.to(device), optimizer, collator, features, device, precision


def profile(config_path: str, overrides: list[str], steps: int, batch_size: int, compile_model: bool = False,
            attention: str | None = None) -> dict:
    model, optimizer, collator, features, device, precision = build_step(config_path, overrides, batch_size)
    if attention:
        model.set_attn_implementation(attention)
    attention = model.config._attn_implementation  # read before compiling wraps the model
    if compile_model:
        model = torch.compile(model)
    timers = {"data": 0.0, "optimizer": 0.0}

    def step() -> None:
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in collator(features).items()}
        timers["data"] += time.perf_counter() - start
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timers["optimizer"] += time.perf_counter() - start

    warmup = time.perf_counter()
    for _ in range(2):  # warm-up: first-touch allocations, kernel selection (and compilation)
        step()
    warmup = time.perf_counter() - warmup
    timers = {"data": 0.0, "optimizer": 0.0}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    wall = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    wall = (time.perf_counter() - wall) / steps
    use_cuda = device == "cuda"
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        own = (event.self_device_time_total if use_cuda else event.self_cpu_time_total) / 1e6 / steps
        totals[category(event.key)] = totals.get(category(event.key), 0.0) + own
    # The optimizer's and the collator's operators were counted by name above; replace them by
    # their timed totals so that each second is counted once.
    measured = sum(totals.values())
    per_step = {k: v / steps for k, v in timers.items()}
    scale = max(measured - sum(per_step.values()), 0.0) / measured if measured else 0.0
    breakdown = {k: v * scale for k, v in totals.items()} | per_step
    return {"seconds_per_step": wall, "batch": [len(features), max(len(f["input_ids"]) for f in features)],
            "device": device, "precision": precision, "compiled": compile_model,
            "attention": attention,
            "warmup_seconds": warmup, "breakdown_seconds": breakdown,
            "top_operators": [(e.key, round(e.self_cpu_time_total / 1e6 / steps, 4)) for e in
                              sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]]}


def format_breakdown(result: dict) -> str:
    total = sum(result["breakdown_seconds"].values())
    compiled = f", {result['attention']} attention" + (", torch.compile" if result["compiled"] else "")
    lines = [f"step {result['seconds_per_step']:.2f} s (batch {result['batch'][0]} x {result['batch'][1]} tokens, "
             f"{result['device']}, {result['precision']}{compiled}; 2 warm-up steps took "
             f"{result['warmup_seconds']:.1f} s); operator time by category:"]
    for name, seconds in sorted(result["breakdown_seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<14}{seconds:7.3f} s  {100 * seconds / total:5.1f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--compile", action="store_true", help="profile the step through torch.compile")
    parser.add_argument("--attention", choices=["sdpa", "eager"], help="attention kernel (default: the model's)")
    args = parser.parse_args(argv)
    result = profile(args.config, args.set, args.steps, args.batch_size, args.compile, args.attention)
    print(format_breakdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
