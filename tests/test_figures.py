"""Every figure tunebook reports, checked against its definition.

metrics.json (tokens/s, trained vs input vs padded tokens, seconds per step, peak memory), the
token counts of a training step, each term of the memory estimate, and the benchmark's derived
figures and ratios. Each is computed here from its definition on inputs whose numbers differ from
one another, so a figure computed from the wrong quantity cannot pass.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_llama
from transformers import TrainingArguments

from tunebook import train
from tunebook.config import DataConfig, LoraSettings
from tunebook.formatting import IGNORE_INDEX, completion_collator, tokenize_example
from tunebook.lora import apply_lora
from tunebook.memory import (
    ADAPTER_BYTES,
    EAGER_SCORES_BYTES,
    INT8_ROW_SCALE_BYTES,
    LOGITS_INFER_BYTES,
    LOGITS_TRAIN_VALUES,
    NF4_BYTES_PER_PARAM,
    OVERHEAD_BYTES,
    GiB,
    ModelShape,
    estimate_memory,
)

# ---------------------------------------------------------------- metrics.json


def fake_trainer(world_size: int = 1) -> SimpleNamespace:
    """What collect_metrics reads from a Trainer, with every count different from the others."""
    def reduce(tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return tensor * world_size  # every process counted the same

    history = [{"loss": 2.5, "step": 1}, {"eval_loss": 2.4, "eval_runtime": 0.75, "step": 1},
               {"loss": 1.5, "step": 2}, {"loss": 1.25, "step": 3},
               {"eval_loss": 1.2, "eval_runtime": 0.5, "step": 3}, {"train_runtime": 12.0, "step": 3}]
    return SimpleNamespace(
        trained_tokens=300, input_tokens=500, padded_tokens=640, micro_batches=6,
        accelerator=SimpleNamespace(device="cpu", reduce=reduce),
        state=SimpleNamespace(log_history=history, global_step=3),
        args=SimpleNamespace(gradient_accumulation_steps=2, world_size=world_size),
        batch_log=[{"rows": 2, "width": 8 + i, "trained_tokens": 40 + i, "end": 100.0 + 2 * i} for i in range(6)],
    )


@pytest.mark.parametrize("world_size", [1, 2])
def test_collect_metrics_figures_follow_their_definitions(monkeypatch, world_size: int) -> None:
    monkeypatch.setattr(train, "peak_memory_mb", lambda device: {"cpu": 1234.5}[device])
    stats = {"p50": 10.0}
    metrics = train.collect_metrics(fake_trainer(world_size), runtime=12.0, device="cpu", stats=stats, start=99.5)
    n = world_size
    assert metrics["global_step"] == 3
    assert metrics["train_loss"] == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.25}]
    assert metrics["eval_loss"] == [{"step": 1, "eval_loss": 2.4}, {"step": 3, "eval_loss": 1.2}]
    assert metrics["final_train_loss"] == 1.25 and metrics["final_eval_loss"] == 1.2
    assert metrics["runtime_seconds"] == 12.0 and metrics["eval_seconds"] == 1.25
    assert metrics["seconds_per_step"] == 12.0 / 3  # 6 micro-batches / accumulation 2 = 3 optimizer steps
    assert (metrics["trained_tokens"], metrics["input_tokens"], metrics["padded_tokens"]) == (300 * n, 500 * n, 640 * n)
    assert metrics["trained_tokens_per_second"] == 300 * n / 12.0
    assert metrics["input_tokens_per_second"] == 500 * n / 12.0
    assert metrics["batch_log"][0] == {"rows": 2, "width": 8, "trained_tokens": 40, "end_seconds": 0.5}
    assert [b["end_seconds"] for b in metrics["batch_log"]] == [0.5 + 2 * i for i in range(6)]
    assert metrics["peak_memory_mb"] == 1234.5 and metrics["world_size"] == world_size
    assert metrics["length_stats"] is stats


def test_batch_ends_count_from_the_start_given(monkeypatch) -> None:
    monkeypatch.setattr(train, "peak_memory_mb", lambda device: 1.0)
    ends = [b["end_seconds"] for b in train.collect_metrics(fake_trainer(), 12.0, "cpu", {})["batch_log"]]
    assert ends == [100.0 + 2 * i for i in range(6)]  # no start given: the perf_counter readings themselves


def test_collect_metrics_without_logged_losses(monkeypatch) -> None:
    monkeypatch.setattr(train, "peak_memory_mb", lambda device: 1.0)
    trainer = fake_trainer()
    trainer.state.log_history, trainer.micro_batches = [], 0
    metrics = train.collect_metrics(trainer, runtime=3.0, device="cpu", stats={})
    assert math.isnan(metrics["final_train_loss"]) and metrics["final_eval_loss"] is None
    assert metrics["eval_seconds"] == 0 and metrics["seconds_per_step"] == 3.0  # counted as one step


def test_peak_memory_without_proc_is_the_lifetime_resident_set_peak(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(train, "PROC_STATUS", tmp_path / "absent")
    monkeypatch.setattr(train.resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 1024 * 1024))
    monkeypatch.setattr(train.sys, "platform", "linux")
    assert train.peak_memory_mb("cpu") == 3 * 1024  # Linux reports KiB


@pytest.mark.skipif(not train.PROC_STATUS.exists(), reason="needs Linux /proc")
def test_peak_memory_counts_from_the_reset() -> None:
    # A notebook trains several runs in one kernel: each must report its own peak, not the largest
    # of every run before it. 400 MB touched, then freed, stays in the peak until the reset.
    import numpy as np

    held = np.ones(50 * 2**20)  # 400 MB, every page written
    del held
    before = train.peak_memory_mb("cpu")
    train.reset_peak_memory("cpu")
    after = train.peak_memory_mb("cpu")
    assert after < before - 300, (before, after)


def test_peak_memory_on_cuda_is_the_allocator_peak(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 5 * 2**20 + 2**19)
    assert train.peak_memory_mb("cuda") == 5.5


def test_training_step_counts_trained_input_and_padded_tokens(smollm_tokenizer, tmp_path) -> None:
    """trained = labels != -100, input = attention mask, padded = every position, per micro-batch."""
    tok = smollm_tokenizer
    config = DataConfig(recipe="instruction")
    rows = [tokenize_example({"instruction": q, "input": "", "output": a}, tok, config)
            for q, a in (("Hi?", "Hello there, friend."), ("What is the capital of France, please?", "Paris."))]
    batch = completion_collator(tok)([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
    model = apply_lora(make_tiny_llama(len(tok), pad_token_id=tok.pad_token_id), LoraSettings(r=2), verbose=False)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    trainer = train.TunebookTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is not run here
    trainer.training_step(model, dict(batch))
    trainer.training_step(model, dict(batch))

    trained = sum(int((torch.tensor(r["labels"]) != IGNORE_INDEX).sum()) for r in rows)
    real = sum(len(r["input_ids"]) for r in rows)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width > max(len(r["input_ids"]) for r in rows)  # padding exists
    assert (trainer.trained_tokens, trainer.input_tokens, trainer.padded_tokens) == (2 * trained, 2 * real, 4 * width)
    assert trained < real < 2 * width
    assert trainer.micro_batches == 2
    assert [{k: v for k, v in b.items() if k != "end"} for b in trainer.batch_log] == [
        {"rows": 2, "width": width, "trained_tokens": trained}] * 2
    assert trainer.batch_log[0]["end"] <= trainer.batch_log[1]["end"]


def test_training_step_counts_classification_rows_as_no_trained_tokens(tmp_path) -> None:
    """Classification labels are one per row: no token is 'trained'; input tokens still count."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=3))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    trainer = train.TunebookTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    batch = {"input_ids": torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]), "labels": torch.tensor([0, 2])}
    trainer.training_step(model, batch)
    assert (trainer.trained_tokens, trainer.input_tokens, trainer.padded_tokens) == (0, 7, 8)
    assert trainer.batch_log[0]["trained_tokens"] == 0
    trainer.training_step(model, {"input_ids": batch["input_ids"], "labels": batch["labels"]})  # no mask: all real
    assert (trainer.input_tokens, trainer.padded_tokens, trainer.micro_batches) == (7 + 8, 16, 2)


def test_training_step_passes_the_token_count_for_the_loss(smollm_tokenizer, tmp_path) -> None:
    """With num_items_in_batch (gradient accumulation), the loss is a sum over that many tokens, not a mean."""
    tok = smollm_tokenizer
    row = tokenize_example({"instruction": "Hi?", "input": "", "output": "Hello there."}, tok, DataConfig())
    batch = completion_collator(tok)([{k: row[k] for k in ("input_ids", "labels")}])
    model = apply_lora(make_tiny_llama(len(tok), pad_token_id=tok.pad_token_id), LoraSettings(r=2), verbose=False)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none")
    trainer = train.TunebookTrainer(model, args)  # positional, as Trainer allows
    trainer.current_gradient_accumulation_steps = 1
    mean = trainer.training_step(model, dict(batch))
    summed = trainer.training_step(model, dict(batch), num_items_in_batch=torch.tensor(1000))
    trained = sum(label != IGNORE_INDEX for label in row["labels"][1:])  # shifted: the first label predicts nothing
    assert float(summed) == pytest.approx(float(mean) * trained / 1000, rel=1e-4)


# ---------------------------------------------------------------- memory estimate, term by term

# A small Llama-like shape (GQA: kv_dim 32 < hidden 64): every term differs from every other.
SHAPE = ModelShape(num_parameters=100_000, hidden_size=64, num_layers=2, intermediate_size=128,
                   num_attention_heads=4, num_kv_heads=2, vocab_size=100, tied_embeddings=False)
# (d_in, d_out) of q, k, v, o, gate, up, down in one layer.
LAYER = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
QUANTIZED = 2 * sum(i * o for i, o in LAYER)  # 73,728
LORA_16 = 2 * 16 * sum(i + o for i, o in LAYER)  # 32,768


def test_shape_arithmetic() -> None:
    assert SHAPE.kv_dim == 32 and SHAPE.quantizable_parameters == QUANTIZED == 73_728
    assert SHAPE.lora_parameters(16) == LORA_16 and SHAPE.lora_parameters(4, ["q_proj"]) == 2 * 4 * 128


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_lora_terms(device: str) -> None:
    s, b = 24, 3
    est = estimate_memory(SHAPE, "lora", batch_size=b, seq_len=s, device=device)
    assert est.weights == 100_000 * 2
    assert est.adapter == LORA_16 * ADAPTER_BYTES
    assert est.gradients == LORA_16 * 4 and est.optimizer_state == LORA_16 * 8  # fp32 AdamW: two moments
    # 16-bit activations, with tunebook.activations' lean RMSNorm and SwiGLU (16·h + 6·i + 4·kv_dim)
    per_layer = s * b * (16 * 64 + 6 * 128 + 4 * 32)
    assert est.activations == 2 * per_layer
    # the chunked loss: 16-bit logits and their 16-bit gradient, 2 x 2 bytes a value
    assert est.logits == s * b * 100 * LOGITS_TRAIN_VALUES * 2 and LOGITS_TRAIN_VALUES == 2 and est.kv_cache == 0
    assert est.overhead == OVERHEAD_BYTES[device] == {"cpu": 0, "cuda": GiB}[device]
    assert est.total == (est.weights + est.adapter + est.gradients + est.optimizer_state + est.activations
                         + est.logits + est.kv_cache + est.overhead)


def test_qlora_4bit_weights_and_dequantization_buffer() -> None:
    est = estimate_memory(SHAPE, "qlora-4bit", device="cpu")
    assert est.weights == int((100_000 - QUANTIZED) * 2 + QUANTIZED * NF4_BYTES_PER_PARAM)
    assert NF4_BYTES_PER_PARAM == pytest.approx(0.516, abs=0.001)
    # One weight at a time is dequantized to 16 bits for its matmul: the largest one (64 x 128).
    assert est.overhead == 128 * 64 * 2
    assert est.adapter == LORA_16 * ADAPTER_BYTES


def test_8bit_weights_and_row_scales() -> None:
    est = estimate_memory(SHAPE, "lora-8bit", device="cpu")
    rows = 2 * sum(o for _, o in LAYER)  # one fp32 scale per output row of every quantized Linear
    assert est.weights == (100_000 - QUANTIZED) * 2 + QUANTIZED * 1 + rows * INT8_ROW_SCALE_BYTES
    assert est.overhead == 0


@pytest.mark.parametrize("weight_bytes", [2, 4])
@pytest.mark.parametrize("optimizer, state_per_param", [("adamw", None), ("adamw-8bit", 2 * (1 + 4 / 2048)),
                                                         ("sgd", 0)])
def test_full_fine_tuning_terms(weight_bytes: int, optimizer: str, state_per_param) -> None:
    est = estimate_memory(SHAPE, "full", weight_dtype_bytes=weight_bytes, optimizer=optimizer, device="cpu")
    per_param = 2 * weight_bytes if state_per_param is None else state_per_param
    assert est.weights == 100_000 * weight_bytes and est.adapter == 0
    assert est.gradients == 100_000 * weight_bytes
    assert est.optimizer_state == int(100_000 * per_param)


def test_unknown_optimizer_and_method() -> None:
    with pytest.raises(ValueError, match="Unknown optimizer 'lion'"):
        estimate_memory(SHAPE, "full", optimizer="lion")
    with pytest.raises(ValueError, match="Unknown method 'dora'"):
        estimate_memory(SHAPE, "dora")


def test_activation_terms_checkpointing_dtype_and_eager_attention() -> None:
    s, b = 16, 2
    per_layer = s * b * (16 * 64 + 6 * 128 + 4 * 32)
    fp32 = estimate_memory(SHAPE, "lora", batch_size=b, seq_len=s, activation_dtype_bytes=4)
    assert fp32.activations == 2 * per_layer * 2
    checkpointed = estimate_memory(SHAPE, "lora", batch_size=b, seq_len=s, gradient_checkpointing=True)
    assert checkpointed.activations == 2 * s * b * 64 * 2 + per_layer  # layer inputs + one layer recomputed
    eager = estimate_memory(SHAPE, "lora", batch_size=b, seq_len=s, attention="eager")
    assert eager.activations == 2 * (per_layer + EAGER_SCORES_BYTES * 4 * s * s * b)


def test_inference_terms() -> None:
    s, b = 16, 2
    est = estimate_memory(SHAPE, "lora", batch_size=b, seq_len=s, inference=True, device="cpu")
    assert est.gradients == est.optimizer_state == 0
    # One layer at a time, with the stock modules' tensors: no backward, nothing is kept.
    assert est.activations == s * b * (20 * 64 + 8 * 128 + 4 * 32)
    assert est.logits == s * b * 100 * LOGITS_INFER_BYTES
    assert est.kv_cache == 2 * 2 * 32 * s * b * 2  # k and v, 2 layers, kv_dim 32, 16-bit


def test_estimate_as_dict_and_breakdown() -> None:
    est = estimate_memory(SHAPE, "lora", device="cuda")
    values = est.as_dict()
    assert values["total"] == est.total / GiB and values["weights"] == est.weights / GiB
    assert set(values) == {"weights", "adapter", "gradients", "optimizer_state", "activations", "logits",
                           "kv_cache", "overhead", "total"}
    lines = est.breakdown().splitlines()
    assert lines[0] == f"lora: {est.total / GiB:.2f} GiB"
    assert lines[1].split()[0] == "overhead"  # biggest first
    assert not any(line.split()[0] == "kv_cache" for line in lines[1:])  # zero terms are left out


# ---------------------------------------------------------------- benchmark figures


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_training", REPO_ROOT / "benchmarks" / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_metrics(steps: int = 3, accumulation: int = 2) -> dict:
    log = [{"rows": 4, "width": 16 + 8 * (i % 2), "trained_tokens": 20 + i, "end_seconds": 1.5 + 0.5 * i}
           for i in range(steps * accumulation)]
    return {"batch_log": log, "global_step": steps, "runtime_seconds": 9.0, "eval_seconds": 1.0,
            "train_loss": [{"step": i + 1, "loss": 3.0 - i} for i in range(steps)], "lora_r": 16,
            "lora_dropout": 0.05,
            "decisions": {"precision": "fp32: asked for", "device": "cpu: none"}, "trained_tokens": 999,
            "input_tokens": 300, "padded_tokens": 400, "peak_memory_mb": 900.0, "final_eval_loss": 0.5}


def test_benchmark_times_the_steady_state(bench) -> None:
    t = bench.timing(bench_metrics())
    assert t["steps"] == 2 and t["seconds"] == 4.0 - 2.0  # end of step 3 minus end of step 1
    assert t["trained_tokens"] == sum(20 + i for i in range(2, 6))
    assert t["padded_tokens"] == sum(4 * (16 + 8 * (i % 2)) for i in range(2, 6))


def test_benchmark_one_step_is_timed_end_to_end(bench) -> None:
    t = bench.timing(bench_metrics(steps=1, accumulation=1))
    assert t["steps"] == 1 and t["seconds"] == 9.0 - 1.0 and t["trained_tokens"] == 20


def test_benchmark_summary_figures(bench) -> None:
    from tunebook.memory import shape_from_name

    metrics = bench_metrics()
    rates = {"fp32": {"block": 100.0, "lm_head": 50.0}}
    row = bench.summarize("tunebook", metrics, shape_from_name("1b"), rates, {"runtime": 600.0}, "cpu")
    t = bench.timing(metrics)
    assert row["seconds_per_step"] == t["seconds"] / t["steps"]
    assert row["trained_tokens_per_second"] == t["trained_tokens"] / t["seconds"]
    assert row["end_to_end_trained_tokens_per_second"] == 999 / (9.0 - 1.0)
    assert row["padding_fraction"] == 1 - 300 / 400
    assert row["peak_memory_growth_mb"] == 900.0 - 600.0
    assert row["estimate_relative_error"] == (row["estimate_mb"] - 300.0) / 300.0
    assert row["floor_fraction_achieved"] == row["floor_seconds_per_step"] / row["seconds_per_step"]
    flops = bench.step_flops(shape_from_name("1b"), [(b["rows"], b["width"]) for b in t["batches"]], 16)
    assert row["floor_seconds_per_step"] == bench.floor_seconds(flops, rates["fp32"]) / t["steps"]
    assert row["final_train_loss"] == 1.5 and row["final_train_loss_window"] == 2  # mean of the last half


def test_benchmark_ratios_divide_each_variant_by_the_tutorial(bench) -> None:
    def row(tps: float, sps: float, peak: float, growth: float, loss: float, eval_loss):
        return {"trained_tokens_per_second": tps, "seconds_per_step": sps, "peak_memory_mb": peak,
                "peak_memory_growth_mb": growth, "final_train_loss": loss, "eval_loss": eval_loss}

    results = {"tutorial": row(10.0, 4.0, 2000.0, 1500.0, 1.0, 0.8),
               "tunebook": row(55.0, 0.5, 1000.0, 600.0, 0.9, None)}
    raw = {"tutorial": {"batch_log": [{"trained_tokens": 5}, {"trained_tokens": 7}]},
           "tunebook": {"batch_log": [{"trained_tokens": 7}, {"trained_tokens": 5}]}}
    bench.add_ratios(results, raw)
    ratio = results["tunebook"]["vs_tutorial"]
    assert ratio["trained_tokens_per_second"] == 5.5 and ratio["seconds_per_step"] == 0.125
    assert ratio["peak_memory"] == 0.5 and ratio["peak_memory_growth"] == 0.4
    assert ratio["final_train_loss_delta"] == pytest.approx(-0.1) and ratio["eval_loss_delta"] is None
    assert results["tunebook"]["same_batches_as_tutorial"] is False
    assert results["tutorial"]["same_batches_as_tutorial"] is True


# ---------------------------------------------------------------- one real step, end to end


def test_one_step_run_saves_every_file_and_its_figures(tiny_model_dir, smollm_tokenizer, tmp_path, capsys) -> None:
    """The smallest real run: what save_run writes, and metrics.json against the run's own records."""
    import json

    from conftest import write_rows

    from tunebook.config import RunConfig, apply_overrides, load_config
    from tunebook.environment import choose_device
    from tunebook.prepare import prepare_tokenized

    data = write_rows(tmp_path / "data" / "train.jsonl",
                      [{"instruction": f"Add {i} and {i}.", "output": f"{2 * i}"} for i in range(20)])
    config = apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.path": str(data), "lora.r": 2,
        "train.output_dir": str(tmp_path / "run"),
        "train.max_steps": 1, "train.per_device_batch_size": 2, "train.precision": "fp32", "train.logging_steps": 1,
        "train.eval_steps": 1, "train.save_steps": 1, "train.eval_loss_examples": 2})
    result = train.run_training(config)
    run = tmp_path / "run"
    assert result.run_dir == run and result.adapter_dir == run / "adapter"
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer_config.json",
                 "environment.json", "metrics.json", "config.yaml", "checkpoints/checkpoint-1/trainer_state.json"):
        assert (run / name).is_file(), name
    for image in ("loss_curve.png", "length_histogram.png"):
        assert (run / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run / "config.yaml") == config
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 2
    environment = json.loads((run / "environment.json").read_text())
    assert environment["torch"] == importlib.metadata.version("torch")
    assert environment["cuda_available"] is torch.cuda.is_available()

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert metrics["decisions"] == {
        "device": str(choose_device()), "precision": "fp32: asked for in the config (train.precision)",
        "optimizer": "adamw_torch: AdamW; adapter optimizer state is small, nothing to page",
        "gradient_checkpointing": "off"}
    assert metrics["global_step"] == 1 and [e["step"] for e in metrics["train_loss"]] == [1]
    assert [e["step"] for e in metrics["eval_loss"]] == [1] and metrics["final_eval_loss"] > 0
    (batch,) = metrics["batch_log"]
    assert batch["rows"] == 2 and metrics["trained_tokens"] == batch["trained_tokens"] > 0
    assert metrics["padded_tokens"] == 2 * batch["width"]
    assert metrics["trained_tokens_per_second"] == pytest.approx(metrics["trained_tokens"] / metrics["runtime_seconds"])
    assert metrics["seconds_per_step"] == pytest.approx(metrics["runtime_seconds"])
    assert metrics["length_stats"] == prepare_tokenized(config, smollm_tokenizer).stats
    out = capsys.readouterr().out
    assert f"adapter saved to {run / 'adapter'}; {metrics['trained_tokens_per_second']:.0f} trained tokens/s" in out
    assert f"final train loss {metrics['final_train_loss']:.4f}" in out
