"""Training benchmark: tunebook's defaults against the usual tutorial recipe (LoRA SFT of SmolLM2).

    python benchmarks/bench_training.py [--steps N] [--batch-size B] [--variants a,b] [--examples N] [--out DIR]

Every variant trains the embedded SmolLM2-135M-Instruct on the same first ``--examples`` rows of
the shipped extraction data (default: steps x batch, so each example is seen exactly once), for the
same number of optimizer steps at the same batch size, each in a fresh process running the
product's own entry point (``python -m tunebook train CONFIG --set ...``). What differs:

    tutorial    fp32, every example padded to 512 tokens, random batches (no length grouping),
                LoRA dropout 0.05 (the usual tutorial value)
    tunebook    the defaults: dynamic padding, length grouping, bf16 autocast where the device has
                fast bf16, frozen base stored in the compute dtype, LoRA dropout 0
    qlora-4bit  the defaults with the frozen base in 4-bit NF4 (configs/.../qlora-4bit.yaml)
    lora-8bit   the defaults with the frozen base in 8-bit LLM.int8 (configs/.../lora-8bit.yaml)

Per variant it reports trained tokens/s, seconds/step, peak memory, losses, the step's compute
floor (model FLOPs / measured GEMM throughput) and tunebook.memory's estimate against the measured
peak, writes ``<out>/<device>-<date>.json`` and prints a table and the targets (PASS/MISS). Then it
profiles the default's step (benchmarks/profile_step.py, ``--profile-steps``, in a fresh process) and
prints where its time goes: GEMMs, attention, loss, elementwise, casts, optimizer, data.
benchmarks/README.md explains every column.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs" / "smollm2-135m-instruct"
MODEL = "smollm2-135m-instruct"
TUTORIAL_LENGTH = 512  # the fixed length tutorials pad every example to

# name -> (config file, extra --set overrides, tunebook.memory method)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "tutorial": ("lora.yaml", ["train.precision=fp32", f"train.pad_to_length={TUTORIAL_LENGTH}",
                               "train.group_by_length=false", "lora.dropout=0.05"], "lora"),
    "tunebook": ("lora.yaml", [], "lora"),
    "qlora-4bit": ("qlora-4bit.yaml", [], "qlora-4bit"),
    "lora-8bit": ("lora-8bit.yaml", [], "lora-8bit"),
    # Diagnostic, not in the default list: the defaults without length grouping draw the very same
    # batches as the tutorial (same sampler, same seed), so a loss gap between the two is numerics
    # (bf16, padding), and a gap between this and `tunebook` is example order.
    "tunebook-random-order": ("lora.yaml", ["train.group_by_length=false"], "lora"),
}
DEFAULT_VARIANTS = ["tutorial", "tunebook", "qlora-4bit", "lora-8bit"]
BASELINE = "tutorial"  # ratios are to this variant, measured in the same run

# Targets (the project's issue 6).
SPEEDUP_TARGET = 3.0  # tunebook trained tokens/s >= 3x the tutorial's
FLOOR_TARGET = 2.0  # tunebook seconds/step <= 2x the compute floor
QLORA_MEMORY_TARGET = 0.5  # QLoRA peak memory <= half of the fp32 LoRA (tutorial) peak

_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# Running the variants


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # embedded model and shipped data: nothing to download
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def variant_overrides(name: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """--set overrides: the shared workload (same examples, steps, batch) plus the variant's own."""
    common = [
        f"train.output_dir={run_dir}",
        f"train.max_steps={args.steps}",
        f"train.per_device_batch_size={args.batch_size}",
        "train.gradient_accumulation_steps=1",
        f"data.max_train_examples={args.examples}",
        "train.logging_steps=1",  # every step's loss, for the final-loss window
        f"train.eval_steps={args.steps}",  # one evaluation, after the last step (excluded from timing)
        f"train.save_steps={args.steps}",  # one checkpoint, at the end (Trainer saves there anyway)
        f"train.eval_loss_examples={args.eval_examples}",  # 0 turns evaluation off
    ]
    return common + VARIANTS[name][1]


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Train one variant in a fresh process; return its metrics.json (plus config) or an error."""
    config_file, _, _ = VARIANTS[name]
    run_dir = (args.runs_dir / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "tunebook", "train", str(CONFIG_DIR / config_file)]
    for item in variant_overrides(name, args, run_dir):
        command += ["--set", item]
    log(f"{name}: training in a fresh process (log: {run_dir / 'bench.log'})")
    start, cpu_before = time.perf_counter(), _children_cpu_seconds()
    with open(run_dir / "bench.log", "w") as out:
        proc = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, _children_cpu_seconds() - cpu_before
    if proc.returncode != 0 or not (run_dir / "metrics.json").is_file():
        tail = (run_dir / "bench.log").read_text(errors="replace").strip().splitlines()[-15:]
        log(f"{name}: FAILED (exit {proc.returncode}) after {wall:.0f} s:\n    " + "\n    ".join(tail))
        return {"error": f"exit code {proc.returncode}", "log_tail": tail, "wall_seconds": wall}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["process_wall_seconds"] = wall
    metrics["process_cpu_seconds"] = cpu
    # CPU seconds per wall second per torch thread: well below 1 means the process waited for cores
    # that other work held, so its timings are slower than this device can do.
    env_file = run_dir / "environment.json"
    threads = (json.loads(env_file.read_text()).get("torch_threads") if env_file.is_file() else None) or 1
    metrics["cpu_utilisation"] = cpu / (wall * threads)
    if metrics["cpu_utilisation"] < 0.5 and metrics["decisions"]["device"].startswith("cpu"):
        log(f"{name}: warning: the process kept its {threads} threads busy only "
            f"{metrics['cpu_utilisation']:.0%} of the time; the CPU looks shared, so its timings are noisy")
    metrics["command"] = " ".join(command[1:])
    import yaml

    lora = yaml.safe_load((run_dir / "config.yaml").read_text())["lora"]
    metrics["lora_r"], metrics["lora_dropout"] = lora["r"], lora["dropout"]
    log(f"{name}: done in {wall:.0f} s")
    return metrics


def profile_default_step(args: argparse.Namespace) -> dict:
    """benchmarks/profile_step.py on the default config in a fresh process: the step's time by category."""
    out = (args.runs_dir / "profile.json").resolve()
    out.unlink(missing_ok=True)
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "profile_step.py"), "--steps", str(args.profile_steps),
               "--batch-size", str(args.batch_size), "--json", str(out)]
    log(f"profiling the default's step ({args.profile_steps} steps after 2 warm-up steps)")
    proc = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        log("profile: FAILED:\n    " + "\n    ".join(tail))
        return {"error": f"exit code {proc.returncode}", "log_tail": tail}
    return json.loads(out.read_text())


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def baseline_rss_mb() -> dict[str, float]:
    """Peak RSS of a fresh process that only imported what `tunebook train` imports (no model).

    On CPU the training process's peak RSS includes this runtime (interpreter, torch,
    transformers, peft, datasets), which is not what the memory estimate predicts.
    """
    code = (
        "import json, resource\n"
        "import tunebook.train, tunebook.quantization\n"
        "rss = {'runtime': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}\n"
        "try:\n"
        "    import bitsandbytes\n"
        "    rss['runtime_with_bitsandbytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "except Exception:\n"
        "    pass\n"
        "print(json.dumps(rss))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# The compute floor


def measure_gemm(shape, dtypes: list[str], device: str) -> dict[str, dict[str, float]]:
    """Best GFLOP/s of F.linear with the model's shapes: (T x hidden) @ (hidden x intermediate)
    (the block projections) and (T x hidden) @ (hidden x vocab) (lm_head), per dtype.

    The best over a few token counts T and repeats: the floor is a lower bound on step time.
    """
    import torch
    import torch.nn.functional as F

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    token_counts = {"block": (4096, 16384) if cuda else (1024, 4096), "lm_head": (4096, 16384) if cuda else (1024,)}
    widths = {"block": shape.intermediate_size, "lm_head": shape.vocab_size}
    rates: dict[str, dict[str, float]] = {}
    for dtype in dtypes:
        rates[dtype] = {}
        for kind, n in widths.items():
            best = 0.0
            for tokens in token_counts[kind]:
                x = torch.randn(tokens, shape.hidden_size, dtype=torch_dtype[dtype], device=device)
                w = torch.randn(n, shape.hidden_size, dtype=torch_dtype[dtype], device=device)
                F.linear(x, w)  # warm-up: kernel selection, first-touch allocations
                sync()
                for _ in range(3):
                    start = time.perf_counter()
                    F.linear(x, w)
                    sync()
                    best = max(best, 2 * tokens * shape.hidden_size * n / (time.perf_counter() - start) / 1e9)
                del x, w
            rates[dtype][kind] = best
    return rates


def step_flops(shape, batch_shapes: list[tuple[int, int]], lora_r: int) -> dict[str, float]:
    """Model FLOPs of all micro-batches, split by which GEMM rate applies ('block' or 'lm_head').

    Per micro-batch of b rows x s positions (T = b·s tokens, padding included: the device
    computes padded positions like any other):
      block linears   forward 2·N·T + backward 2·N·T (activation gradients only: base frozen)
      lm_head         forward 2·h·V·T + backward 2·h·V·T (tied to the frozen embedding: no weight grad)
      attention       forward 4·s²·h_attn per layer and row (QK^T and PV), backward 2x that
      LoRA adapters   forward 2·P·T + backward 4·P·T (activation and A/B weight gradients)
    with N the block linears' parameters, P the adapter parameters, h_attn = heads x head_dim.
    """
    n_block = shape.quantizable_parameters
    n_head = shape.hidden_size * shape.vocab_size
    lora = shape.lora_parameters(lora_r)
    h_attn = shape.num_attention_heads * (shape.head_dim or shape.hidden_size // shape.num_attention_heads)
    block = head = attention = adapters = 0.0
    for rows, width in batch_shapes:
        tokens = rows * width
        block += 4 * n_block * tokens
        head += 4 * n_head * tokens
        attention += 3 * 4 * width**2 * h_attn * shape.num_layers * rows
        adapters += 6 * lora * tokens
    return {"block_linears": block, "lm_head": head, "attention": attention, "lora": adapters,
            "total": block + head + attention + adapters}


def floor_seconds(flops: dict[str, float], rates: dict[str, float]) -> float:
    """Time the FLOPs take at the measured GEMM rates (attention and adapters at the block rate)."""
    at_block_rate = flops["block_linears"] + flops["attention"] + flops["lora"]
    return at_block_rate / (rates["block"] * 1e9) + flops["lm_head"] / (rates["lm_head"] * 1e9)


# ----------------------------------------------------------------------------------------------
# Summaries


def precision_of(metrics: dict) -> str:
    return metrics["decisions"]["precision"].split(":", 1)[0]


def mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def timing(metrics: dict) -> dict:
    """Seconds, steps and tokens to rate the run by.

    Steady state when there are >= 2 steps: from the end of step 1 to the end of the last step, so
    the first step's warm-up (Trainer setup, kernel selection, first-touch allocations) and the
    evaluation and checkpoint after the last step are left out. With one step only, the whole
    `trainer.train()` time minus evaluation (warm-up and checkpoint included).
    """
    log_ = metrics["batch_log"]
    per_step = max(len(log_) // max(metrics["global_step"], 1), 1)  # micro-batches per optimizer step
    if metrics["global_step"] >= 2:
        counted = log_[per_step:]
        seconds = log_[-1]["end_seconds"] - log_[per_step - 1]["end_seconds"]
        steps, kind = metrics["global_step"] - 1, "steady state: steps 2..N"
    else:
        counted = log_
        seconds = metrics["runtime_seconds"] - metrics.get("eval_seconds", 0.0)
        steps, kind = max(metrics["global_step"], 1), "end to end: one step, warm-up and checkpoint included"
    return {"seconds": seconds, "steps": steps, "kind": kind, "batches": counted,
            "trained_tokens": sum(b["trained_tokens"] for b in counted),
            "padded_tokens": sum(b["rows"] * b["width"] for b in counted)}


def summarize(name: str, metrics: dict, shape, rates: dict, baseline: dict, device: str) -> dict:
    from tunebook.memory import OVERHEAD_BYTES, estimate_memory

    t = timing(metrics)
    losses = [e["loss"] for e in metrics["train_loss"]]
    window = losses[len(losses) // 2:]  # the last half of the steps
    final_loss, final_se = mean_se(window)
    precision = precision_of(metrics)
    shapes = [(b["rows"], b["width"]) for b in t["batches"]]
    flops = step_flops(shape, shapes, metrics["lora_r"])
    floor = floor_seconds(flops, rates[precision]) / t["steps"]
    seconds_per_step = t["seconds"] / t["steps"]
    end_to_end = metrics["runtime_seconds"] - metrics.get("eval_seconds", 0.0)

    # Memory: the estimate for the biggest micro-batch the run saw, against the measured peak
    # minus the runtime baseline (CPU RSS) or the CUDA context the estimate adds as overhead.
    method = VARIANTS[name][2]
    rows, width = max(((b["rows"], b["width"]) for b in metrics["batch_log"]), key=lambda rw: rw[0] * rw[1])
    estimate = estimate_memory(shape, method, batch_size=rows, seq_len=width, lora_r=metrics["lora_r"],
                               lora_dropout=metrics["lora_dropout"], device=device,
                               weight_dtype_bytes=_DTYPE_BYTES[precision],
                               activation_dtype_bytes=_DTYPE_BYTES[precision])
    if device == "cuda":
        base_mb, estimate_mb = 0.0, (estimate.total - OVERHEAD_BYTES["cuda"]) / 2**20
    else:
        quantized = method in ("qlora-4bit", "lora-8bit")
        base_mb = baseline.get("runtime_with_bitsandbytes" if quantized else "runtime", baseline["runtime"])
        estimate_mb = estimate.total / 2**20
    peak = metrics["peak_memory_mb"]
    growth = peak - base_mb
    return {
        "precision": precision,
        "steps": metrics["global_step"],
        "timing": t["kind"],
        "timed_steps": t["steps"],
        "timed_seconds": t["seconds"],
        "seconds_per_step": seconds_per_step,
        "trained_tokens_per_second": t["trained_tokens"] / t["seconds"],
        "padded_tokens_per_second": t["padded_tokens"] / t["seconds"],
        "first_step_seconds": metrics["batch_log"][0]["end_seconds"] if metrics["batch_log"] else None,
        "end_to_end_seconds": end_to_end,  # trainer.train() minus evaluation: warm-up and checkpoint in
        "end_to_end_trained_tokens_per_second": metrics["trained_tokens"] / end_to_end,
        "eval_seconds": metrics.get("eval_seconds", 0.0),
        "trained_tokens": metrics["trained_tokens"],
        "input_tokens": metrics["input_tokens"],
        "padded_tokens": metrics["padded_tokens"],
        "padding_fraction": 1 - metrics["input_tokens"] / max(metrics["padded_tokens"], 1),
        "final_train_loss": final_loss,
        "final_train_loss_se": final_se,
        "final_train_loss_window": len(window),
        "mean_train_loss": mean_se(losses)[0],
        "eval_loss": metrics.get("final_eval_loss"),
        "peak_memory_mb": peak,
        "baseline_memory_mb": base_mb,
        "peak_memory_growth_mb": growth,
        "estimate_mb": estimate_mb,
        "estimate_terms_gib": estimate.as_dict(),
        "estimate_batch": [rows, width],
        "estimate_relative_error": (estimate_mb - growth) / growth if growth > 0 else math.nan,
        "flops_per_step": {k: v / t["steps"] for k, v in flops.items()},
        "floor_seconds_per_step": floor,
        "floor_fraction_achieved": floor / seconds_per_step,
        "achieved_tflops": flops["total"] / t["seconds"] / 1e12,
        "process_wall_seconds": metrics.get("process_wall_seconds"),
        "process_cpu_seconds": metrics.get("process_cpu_seconds"),
        "cpu_utilisation": metrics.get("cpu_utilisation"),
        "command": metrics.get("command"),
        "decisions": metrics["decisions"],
    }


def add_ratios(results: dict[str, dict], raw: dict[str, dict]) -> None:
    base = results.get(BASELINE)
    if not base or "error" in base:
        return
    base_batches = [b["trained_tokens"] for b in raw[BASELINE]["batch_log"]]
    for name, row in results.items():
        if "error" in row:
            continue
        # Same trained tokens in every micro-batch, in order: (almost surely) the same batches.
        row["same_batches_as_tutorial"] = [b["trained_tokens"] for b in raw[name]["batch_log"]] == base_batches
        row["vs_tutorial"] = {
            "trained_tokens_per_second": row["trained_tokens_per_second"] / base["trained_tokens_per_second"],
            "seconds_per_step": row["seconds_per_step"] / base["seconds_per_step"],
            "peak_memory": row["peak_memory_mb"] / base["peak_memory_mb"],
            "peak_memory_growth": row["peak_memory_growth_mb"] / base["peak_memory_growth_mb"],
            "final_train_loss_delta": row["final_train_loss"] - base["final_train_loss"],
            "eval_loss_delta": (row["eval_loss"] - base["eval_loss"])
            if row["eval_loss"] is not None and base["eval_loss"] is not None else None,
        }


def evaluate_targets(results: dict[str, dict], rates: dict) -> list[dict]:
    ok = {name: row for name, row in results.items() if "error" not in row}
    targets = []

    def contended(limit: str | None, *rows: dict) -> str | None:
        busy = [r["cpu_utilisation"] for r in rows if r.get("cpu_utilisation") is not None]
        if limit and busy and min(busy) < 0.5 and not rows[0]["decisions"]["device"].startswith("cuda"):
            return (f"a shared CPU first: the training threads were busy only {min(busy):.0%} of the time, "
                    f"so the timings are not this device's; rerun on a quiet machine. Otherwise: {limit}")
        return limit

    def target(name: str, needs: list[str], check) -> None:
        missing = [v for v in needs if v not in ok]
        if missing:
            targets.append({"target": name, "status": "SKIP", "figure": f"needs variant(s) {', '.join(missing)}"})
        else:
            status, figure, limit = check()
            targets.append({"target": name, "status": status, "figure": figure, "limited_by": limit})

    def speed():
        tut, tb = ok["tutorial"], ok["tunebook"]
        speedup = tb["trained_tokens_per_second"] / tut["trained_tokens_per_second"]
        # "Within noise": the step-to-step spread of the training loss (standard error of the
        # final-window mean, both runs); compare held-out loss if evaluated, else the final window.
        noise = 2 * math.hypot(nan0(tut["final_train_loss_se"]), nan0(tb["final_train_loss_se"]))
        if tut["eval_loss"] is not None and tb["eval_loss"] is not None:
            which, delta = "eval loss", tb["eval_loss"] - tut["eval_loss"]
        else:
            which, delta = "final train loss", tb["final_train_loss"] - tut["final_train_loss"]
        same_loss = abs(delta) <= noise if noise > 0 else None
        if same_loss is None:  # fewer than 4 steps: no step-to-step spread to judge the loss by
            status = "N/A"
        else:
            status = "PASS" if speedup >= SPEEDUP_TARGET and same_loss else "MISS"
        figure = (f"{speedup:.2f}x trained tokens/s (target >= {SPEEDUP_TARGET:.0f}x); {which} "
                  f"delta {delta:+.4f} vs noise +-{noise:.4f}"
                  + ("" if noise > 0 else " (noise unknown: needs >= 4 steps)"))
        limits = []
        if speedup < SPEEDUP_TARGET:
            padding = tut["padded_tokens"] / max(tb["padded_tokens"], 1)
            dtype = rates[tb["precision"]]["block"] / rates[tut["precision"]]["block"]
            limits.append(contended(
                f"padding removed {padding:.2f}x of the computed tokens and {tb['precision']} GEMMs run "
                f"{dtype:.2f}x the {tut['precision']} rate here; the rest of the step (elementwise ops, "
                "fp32 loss over the vocabulary, optimizer, per-step overhead) does not shrink with them", tut, tb))
        if same_loss is False:
            limits.append("the loss differs by more than the step-to-step noise; run --variants "
                          "tutorial,tunebook-random-order,tunebook to split numerics (bf16, same batches) from "
                          "example order (length grouping)")
        return status, figure, " | ".join(limits) or None

    def floor():
        tb = ok["tunebook"]
        ratio = tb["seconds_per_step"] / tb["floor_seconds_per_step"]
        status = "PASS" if ratio <= FLOOR_TARGET else "MISS"
        figure = (f"{tb['seconds_per_step']:.3f} s/step = {ratio:.2f}x the floor of "
                  f"{tb['floor_seconds_per_step']:.3f} s ({tb['floor_fraction_achieved']:.0%} achieved; "
                  f"target <= {FLOOR_TARGET:.0f}x)")
        limit = None
        if status == "MISS":
            gap = tb["seconds_per_step"] - tb["floor_seconds_per_step"]
            limit = (f"{gap:.3f} s/step outside the counted GEMMs: small per-head attention matmuls, "
                     "memory-bound elementwise work (RMSNorm, SiLU, RoPE, adapter dropout, bf16<->fp32 casts "
                     "of the adapters), the fp32 cross-entropy over the 49k-token vocabulary, AdamW, and "
                     "per-step Python/dispatch overhead, which weighs most at small batches")
        return status, figure, contended(limit, tb)

    def memory():
        tut, q = ok["tutorial"], ok["qlora-4bit"]
        ratio = q["peak_memory_growth_mb"] / tut["peak_memory_growth_mb"]
        raw = q["peak_memory_mb"] / tut["peak_memory_mb"]
        status = "PASS" if ratio <= QLORA_MEMORY_TARGET else "MISS"
        figure = (f"QLoRA peak {q['peak_memory_growth_mb']:.0f} MB vs fp32 LoRA {tut['peak_memory_growth_mb']:.0f} MB "
                  f"above the runtime baseline = {ratio:.2f}x (raw peaks {raw:.2f}x; target <= {QLORA_MEMORY_TARGET}x)")
        limit = None
        if status == "MISS":
            terms = q["estimate_terms_gib"]
            weights = terms["weights"] / terms["total"] if terms["total"] else math.nan
            limit = (f"weights are only {weights:.0%} of QLoRA's estimated peak at this model size; activations, "
                     "logits and the runtime dominate, and 4-bit storage does not shrink them")
        return status, figure, limit

    target("tunebook >= 3x tutorial trained tokens/s, same loss", ["tutorial", "tunebook"], speed)
    target("tunebook step within 2x of the compute floor", ["tunebook"], floor)
    target("QLoRA peak memory <= half of fp32 LoRA's", ["tutorial", "qlora-4bit"], memory)
    return targets


def nan0(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else x


def format_table(results: dict[str, dict]) -> str:
    columns = [("variant", 21, "{}"), ("prec", 5, "{}"), ("tok/s", 8, "{:.1f}"), ("x tut", 6, "{:.2f}"),
               ("s/step", 8, "{:.3f}"), ("floor s", 8, "{:.3f}"), ("of floor", 8, "{:.0%}"),
               ("pad %", 6, "{:.0%}"), ("peak MB", 8, "{:.0f}"), ("-base", 7, "{:.0f}"),
               ("x tut", 6, "{:.2f}"), ("est MB", 7, "{:.0f}"), ("est err", 8, "{:+.0%}"),
               ("loss", 7, "{:.4f}"), ("eval", 7, "{:.4f}")]
    header = " ".join(f"{title:>{width}}" for title, width, _ in columns)
    lines = [header, "-" * len(header)]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"{name:>21} FAILED: {row['error']}")
            continue
        ratio = row.get("vs_tutorial", {})
        values = [name, row["precision"], row["trained_tokens_per_second"], ratio.get("trained_tokens_per_second"),
                  row["seconds_per_step"], row["floor_seconds_per_step"], row["floor_fraction_achieved"],
                  row["padding_fraction"], row["peak_memory_mb"], row["peak_memory_growth_mb"],
                  ratio.get("peak_memory_growth"), row["estimate_mb"], row["estimate_relative_error"],
                  row["final_train_loss"], row["eval_loss"]]
        cells = []
        for (_, width, fmt), value in zip(columns, values):
            text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)
            cells.append(f"{text:>{width}}")
        lines.append(" ".join(cells))
    return "\n".join(lines)


def device_slug(env: dict) -> str:
    if env.get("cuda_available"):
        name = str(env.get("gpu_name", "cuda"))
    else:
        name = f"cpu-{env.get('cpu', 'unknown')}-{env.get('torch_threads', '')}t"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per variant (default 10)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: the first four)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training examples (default steps x batch: each seen once)")
    parser.add_argument("--eval-examples", type=int, default=16,
                        help="validation examples for the held-out loss after training (0: off; default 16)")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps the default's time breakdown is profiled over (0: no profile; default 3)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results",
                        help="folder for the results JSON (default benchmarks/results)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs" / "bench",
                        help="folder for the variants' run folders (default runs/bench)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.steps < 1 or args.batch_size < 1 or args.profile_steps < 0:
        parser.error("--steps and --batch-size must be >= 1, --profile-steps >= 0")
    args.examples = args.examples or args.steps * args.batch_size
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = datetime.datetime.now()
    log(f"variants {', '.join(args.variants)}; {args.steps} steps x batch {args.batch_size} on "
        f"{args.examples} examples; each in a fresh process")
    # This process imports nothing heavy (no torch) until every child has run: on Linux a child's
    # ru_maxrss starts from its parent's peak RSS (the kernel carries the peak across fork and
    # exec), so a big parent would inflate every variant's measured peak.
    baseline = baseline_rss_mb()
    log(f"runtime baseline RSS (a process that only imported tunebook.train): {baseline['runtime']:.0f} MB")
    raw = {name: run_variant(name, args) for name in args.variants}
    step_profile = profile_default_step(args) if args.profile_steps else None

    import torch

    from tunebook.environment import choose_device, choose_precision, environment_report
    from tunebook.memory import shape_from_name

    env = environment_report()
    device = choose_device().value
    shape = shape_from_name(MODEL)
    dtypes = {"fp32", choose_precision("auto", device).value}
    dtypes |= {precision_of(m) for m in raw.values() if "error" not in m}  # e.g. fp16 on older GPUs
    log(f"measuring GEMM throughput on {device} ({env.get('gpu_name') or env.get('cpu')}, "
        f"{torch.get_num_threads()} torch threads): {', '.join(sorted(dtypes))}")
    rates = measure_gemm(shape, sorted(dtypes), device)
    for dtype, by_kind in rates.items():
        log(f"  {dtype}: block {by_kind['block']:.0f} GFLOP/s, lm_head {by_kind['lm_head']:.0f} GFLOP/s")
    if device == "cuda":
        baseline = {"runtime": 0.0}  # max_memory_allocated counts tensors only
    results = {name: (m if "error" in m else summarize(name, m, shape, rates, baseline, device))
               for name, m in raw.items()}
    add_ratios(results, raw)
    targets = evaluate_targets(results, rates)

    payload = {
        "benchmark": "LoRA SFT of SmolLM2-135M-Instruct on data/extraction (benchmarks/bench_training.py)",
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": (datetime.datetime.now() - started).total_seconds(),
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "examples": args.examples,
                     "eval_examples": args.eval_examples, "variants": args.variants,
                     "tutorial_length": TUTORIAL_LENGTH,
                     "overrides": {name: variant_overrides(name, args, args.runs_dir / name)
                                   for name in args.variants}},
        "environment": env,
        "gemm_gflops": rates,
        "baseline_rss_mb": baseline,
        "variants": results,
        "targets": targets,
        "step_profile": step_profile,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{device_slug(env)}-{started.date().isoformat()}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))

    print()
    print(format_table(results))
    print()
    for t in targets:
        print(f"{t['status']:<5} {t['target']}: {t['figure']}")
        if t.get("limited_by"):
            print(f"      limited by: {t['limited_by']}")
    if step_profile and "error" not in step_profile:
        from profile_step import format_breakdown

        print("\nWhere the default's step goes (torch profiler, one batch of typical length):")
        print(format_breakdown(step_profile))
    print(f"\nresults: {path}")
    return 1 if any("error" in m for m in raw.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
