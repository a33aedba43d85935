"""Training runs end to end on a tiny random Llama (saved to a folder and loaded by path), and the CLI.

Each run is 4 optimizer steps on 24 examples: a few seconds on a CPU.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, make_tiny_llama, save_tiny_bert_classifier, write_rows
from safetensors import safe_open

from tunebook import cli
from tunebook.config import RunConfig, apply_overrides, save_config
from tunebook.errors import RunFolderError
from tunebook.train import run_training
from tunebook.trainer import TrainingDiverged

RUN_FILES = ["adapter/adapter_model.safetensors", "adapter/adapter_config.json", "config.yaml",
             "environment.json", "metrics.json", "loss_curve.png", "length_histogram.png"]


@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """The same tiny Llama with a NaN in its final norm: the very first loss is NaN."""
    tok = smollm_tokenizer
    model = make_tiny_llama(len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    path = tmp_path_factory.mktemp("models") / "nan-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    rows = [{"instruction": f"What is {i} plus {i}?", "input": "" if i % 3 else f"Show work for {i}.",
             "output": f"{i} plus {i} is {2 * i}."} for i in range(30)]
    return write_rows(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def make_config(model_dir: Path, data: Path, output_dir: Path, **overrides) -> RunConfig:
    values = {
        "model.name": str(model_dir),
        "data.path": str(data),
        "data.seed": 0,
        "lora.r": 4,
        "lora.alpha": 8,
        "train.output_dir": str(output_dir),
        "train.max_steps": 4,
        "train.per_device_batch_size": 4,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0,
        "train.precision": "fp32",
        "train.logging_steps": 1,
        "train.eval_steps": 2,
        "train.save_steps": 2,
        "train.eval_loss_examples": None,
        "train.seed": 7,
    }
    values.update(overrides)
    return apply_overrides(RunConfig(), values)


def losses(metrics: dict) -> list[float]:
    return [entry["loss"] for entry in metrics["train_loss"]]


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tiny_dataset, tmp_path_factory):
    """One uninterrupted 4-step run, shared by the tests that inspect its folder."""
    config = make_config(tiny_model_dir, tiny_dataset, tmp_path_factory.mktemp("runs") / "first")
    return config, run_training(config)


def test_run_folder_contents(first_run) -> None:
    config, result = first_run
    run_dir = Path(config.train.output_dir)
    assert result.run_dir == run_dir and result.adapter_dir == run_dir / "adapter"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    # Images are real PNGs, not empty files.
    for image in ("loss_curve.png", "length_histogram.png"):
        assert (run_dir / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved config is the resolved one.
    from tunebook.config import load_config

    assert load_config(run_dir / "config.yaml") == config
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["torch"] == importlib.metadata.version("torch")
    assert environment["cuda_available"] is torch.cuda.is_available()


def test_adapter_holds_only_lora_weights(first_run) -> None:
    config, result = first_run
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    # 7 projections x 2 layers x (A, B); no base weights, no embeddings.
    assert len(keys) == 28
    assert all("lora_A" in k or "lora_B" in k for k in keys), keys
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert sorted(adapter_config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def test_metrics_file(first_run) -> None:
    config, result = first_run
    metrics = json.loads((Path(config.train.output_dir) / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train_loss"]] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(loss)) and loss > 0 for loss in losses(metrics))
    assert [e["step"] for e in metrics["eval_loss"]] == [2, 4]
    assert metrics["global_step"] == 4
    assert metrics["final_train_loss"] == metrics["train_loss"][-1]["loss"]
    assert metrics["final_eval_loss"] == metrics["eval_loss"][-1]["eval_loss"]
    # 4 steps x batch 4: every trained token is a real (non-padding) token; each figure is checked
    # against its definition (per micro-batch counts, runtime).
    log = metrics["batch_log"]
    assert [b["rows"] for b in log] == [4, 4, 4, 4]
    assert metrics["trained_tokens"] == sum(b["trained_tokens"] for b in log) > 0
    assert metrics["padded_tokens"] == sum(b["rows"] * b["width"] for b in log)
    assert metrics["trained_tokens"] < metrics["input_tokens"] <= metrics["padded_tokens"]
    runtime = metrics["runtime_seconds"]
    assert metrics["trained_tokens_per_second"] == pytest.approx(metrics["trained_tokens"] / runtime)
    assert metrics["input_tokens_per_second"] == pytest.approx(metrics["input_tokens"] / runtime)
    assert metrics["seconds_per_step"] == pytest.approx(runtime / 4)
    ends = [b["end_seconds"] for b in log]
    assert 0 < ends[0] and ends == sorted(ends) and ends[-1] <= runtime
    assert 0 < metrics["eval_seconds"] < runtime and metrics["world_size"] == 1
    assert metrics["decisions"]["precision"].startswith("fp32: ")
    assert metrics["length_stats"]["count"] == 24  # 30 rows minus 10% validation, 10% test
    assert metrics == json.loads(json.dumps(result.metrics, default=str))


def test_training_lowers_the_loss(first_run) -> None:
    _, result = first_run
    eval_losses = [e["eval_loss"] for e in result.metrics["eval_loss"]]
    assert eval_losses[-1] < eval_losses[0]


def test_each_log_is_one_readable_line(tiny_model_dir, tiny_dataset, tmp_path, capsys) -> None:
    # The progress bar writes "step 1/2: loss 2.345, grad norm ..., lr ..." under itself, with the
    # same figures as metrics.json, instead of transformers' dict of quoted numbers.
    config = make_config(tiny_model_dir, tiny_dataset, tmp_path / "run", **{"train.max_steps": 2})
    metrics = run_training(config).metrics
    out = capsys.readouterr().out
    assert "{'loss'" not in out and "train_runtime" not in out
    for entry in metrics["train_loss"]:
        assert f"step {entry['step']}/2: loss {entry['loss']:.4g}, grad norm " in out
    assert out.count(": eval loss ") == len(metrics["eval_loss"]) == 1


def test_log_lines_stay_readable_with_progress_bars_off(tiny_model_dir, tiny_dataset, tmp_path, capsys) -> None:
    # Notebooks set transformers' verbosity to error, which turns the Trainer's bars off
    # (disable_tqdm) and its PrinterCallback on: the same short lines replace its dicts.
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        config = make_config(tiny_model_dir, tiny_dataset, tmp_path / "run", **{"train.max_steps": 2})
        metrics = run_training(config).metrics
    finally:
        transformers.logging.set_verbosity(level)
    out = capsys.readouterr().out
    assert "{'loss'" not in out and "'eval_loss'" not in out
    assert out.count(": loss ") == len(metrics["train_loss"]) == 2 and out.count(": eval loss ") == 1


def test_same_seed_same_losses(first_run, tiny_model_dir, tiny_dataset, tmp_path) -> None:
    config, result = first_run
    again = run_training(make_config(tiny_model_dir, tiny_dataset, tmp_path / "again"))
    assert losses(again.metrics) == losses(result.metrics)
    assert again.metrics["eval_loss"] == result.metrics["eval_loss"]
    # The seed matters (adapter init, dropout, data order), so equality above is not vacuous.
    other = run_training(make_config(tiny_model_dir, tiny_dataset, tmp_path / "other", **{"train.seed": 8}))
    assert losses(other.metrics) != losses(result.metrics)


def test_resume_continues_exactly(first_run, tmp_path) -> None:
    config, result = first_run
    # Copy the finished run, then make it look as if it had stopped after step 2.
    run_dir = tmp_path / "interrupted"
    shutil.copytree(config.train.output_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-4")
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "metrics.json").unlink()
    config_path = tmp_path / "resume.yaml"
    save_config(apply_overrides(config, {"train.output_dir": str(run_dir)}), config_path)

    assert cli.main(["train", str(config_path), "--resume"]) == 0

    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert [e["step"] for e in resumed["train_loss"]] == [1, 2, 3, 4]
    assert losses(resumed) == pytest.approx(losses(result.metrics), abs=1e-4)
    assert resumed["final_train_loss"] == pytest.approx(result.metrics["final_train_loss"], abs=1e-4)
    # It really resumed: this process trained only steps 3-4 (about half the tokens of steps 1-4).
    assert resumed["global_step"] == 4
    assert 0.3 < resumed["trained_tokens"] / result.metrics["trained_tokens"] < 0.7
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), framework="pt") as f, \
            safe_open(str(result.adapter_dir / "adapter_model.safetensors"), framework="pt") as g:
        for key in f.keys():
            torch.testing.assert_close(f.get_tensor(key), g.get_tensor(key), atol=1e-5, rtol=1e-4)


def test_resume_skips_a_checkpoint_cut_short(first_run, tmp_path, capsys) -> None:
    """Killed while writing checkpoint-4: resume from checkpoint-2 and still end where the
    uninterrupted run ended."""
    config, result = first_run
    run_dir = tmp_path / "cut-short"
    shutil.copytree(config.train.output_dir, run_dir)
    state = run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # what a kill in the middle of the write leaves
    shutil.rmtree(run_dir / "adapter")
    (run_dir / "metrics.json").unlink()

    resumed = run_training(apply_overrides(config, {"train.output_dir": str(run_dir)}), resume=True)
    out = capsys.readouterr().out
    assert "removing checkpoint-4" in out and "continuing from checkpoint-2" in out
    # Written again, completely, when the resumed run reached step 4.
    assert json.loads(state.read_text())["global_step"] == 4
    assert 0.3 < resumed.metrics["trained_tokens"] / result.metrics["trained_tokens"] < 0.7
    assert losses(resumed.metrics) == pytest.approx(losses(result.metrics), abs=1e-4)


def test_killed_run_resumes_to_the_same_result(tiny_model_dir, tiny_dataset, tmp_path) -> None:
    """SIGKILL a real `tunebook train` process after its first checkpoint, `--resume`, and compare
    with an uninterrupted run of the same config."""
    config = make_config(tiny_model_dir, tiny_dataset, tmp_path / "killed",
                         **{"train.max_steps": 24, "train.eval_steps": 12})
    config_path = tmp_path / "killed.yaml"
    save_config(config, config_path)
    process = subprocess.Popen([sys.executable, "-m", "tunebook", "train", str(config_path)],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_state = tmp_path / "killed" / "checkpoints" / "checkpoint-2" / "trainer_state.json"

    def first_checkpoint_complete() -> bool:
        try:
            json.loads(first_state.read_text())
            return True
        except (OSError, ValueError):  # not there yet, or still being written
            return False

    deadline = time.monotonic() + 300
    while not first_checkpoint_complete() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    process.wait()
    assert first_state.exists() and not (tmp_path / "killed" / "metrics.json").exists(), \
        "the run must be killed after its first checkpoint and before it finished"

    assert cli.main(["train", str(config_path), "--resume"]) == 0
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    straight = run_training(apply_overrides(config, {"train.output_dir": str(tmp_path / "straight")}))
    assert resumed["global_step"] == 24
    assert resumed["final_train_loss"] == pytest.approx(straight.metrics["final_train_loss"], abs=1e-4)
    assert resumed["final_eval_loss"] == pytest.approx(straight.metrics["final_eval_loss"], abs=1e-4)


def test_resume_without_checkpoint(tiny_model_dir, tiny_dataset, tmp_path) -> None:
    config = make_config(tiny_model_dir, tiny_dataset, tmp_path / "never-ran")
    with pytest.raises(RunFolderError, match=r"--resume: no run in .*never-ran"):
        run_training(config, resume=True)
    assert not (tmp_path / "never-ran").exists()  # failed before creating anything


def test_nan_loss_stops_training(nan_model_dir, tiny_dataset, tmp_path) -> None:
    config = make_config(nan_model_dir, tiny_dataset, tmp_path / "nan")
    with pytest.raises(TrainingDiverged) as info:
        run_training(config)
    message = str(info.value)
    assert "Loss became nan at step 1" in message
    assert "train.learning_rate" in message and "adapter was not saved" in message
    assert not (tmp_path / "nan" / "adapter").exists()


def test_bad_data_fails_before_the_model_loads(tiny_model_dir, tmp_data, tmp_path, monkeypatch) -> None:
    from tunebook import train
    from tunebook.data import DataValidationError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(train, "load_model", no_model)
    bad = tmp_data([{"instruction": f"Q{i}", "output": "" if i == 4 else "A"} for i in range(10)])
    config = make_config(tiny_model_dir, bad, tmp_path / "bad")
    with pytest.raises(DataValidationError, match="line 5, field 'output'"):
        run_training(config)


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A tiny random BERT classifier (3 labels) with the MiniLM tokenizer, saved to a folder."""
    return save_tiny_bert_classifier(tmp_path_factory.mktemp("models") / "tiny-bert", num_labels=3)


@pytest.fixture(scope="module")
def topics_dataset(tmp_path_factory) -> Path:
    rows = [{"text": f"{label} story number {i}" + " more" * (i % 5), "label": label}
            for i in range(10) for label in ("World", "Sports", "Business")]
    return write_rows(tmp_path_factory.mktemp("data") / "topics.jsonl", rows)


def classification_config(model_dir: Path, data: Path, output_dir: Path, **overrides) -> RunConfig:
    values = {"model.task": "sequence-classification", "data.recipe": "classification",
              "data.labels": ["World", "Sports", "Business"], "train.max_steps": 3}
    values.update(overrides)
    return make_config(model_dir, data, output_dir, **values)


def test_classification_run_saves_adapter_and_head(tiny_classifier_dir, topics_dataset, tmp_path) -> None:
    result = run_training(classification_config(tiny_classifier_dir, topics_dataset, tmp_path / "cls"))
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert {k for k in keys if "lora_" not in k} == {"base_model.model.classifier.weight",
                                                     "base_model.model.classifier.bias"}
    assert any("lora_A" in k for k in keys)
    assert [e["step"] for e in result.metrics["train_loss"]] == [1, 2, 3]
    # One label per row: no token is "trained"; every input token is a non-padding one.
    log = result.metrics["batch_log"]
    assert result.metrics["trained_tokens"] == 0 and all(b["trained_tokens"] == 0 for b in log)
    assert result.metrics["padded_tokens"] == sum(b["rows"] * b["width"] for b in log)
    assert 0 < result.metrics["input_tokens"] <= result.metrics["padded_tokens"]


def test_bf16_run_keeps_trained_head_in_fp32(tiny_classifier_dir, topics_dataset, tmp_path) -> None:
    config = classification_config(tiny_classifier_dir, topics_dataset, tmp_path / "bf16",
                                   **{"train.precision": "bf16", "train.max_steps": 1})
    result = run_training(config)
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    not_fp32 = {k: d for k, d in dtypes.items() if d != torch.float32}
    assert not not_fp32, not_fp32


# ---------------------------------------------------------------- CLI

def test_cli_env_prints_versions() -> None:
    out = subprocess.run([sys.executable, "-m", "tunebook", "env"], capture_output=True, text=True,
                         timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split(None, 1)[1].strip() for line in out.stdout.splitlines() if line.strip()}
    for package in ("torch", "transformers", "peft", "datasets", "bitsandbytes"):
        assert lines[package] == importlib.metadata.version(package)
    assert lines["device"].startswith(("cpu: ", "cuda: "))
    assert lines["precision"].split(":")[0] in ("bf16", "fp16", "fp32")


def test_cli_config_typo_exits_2_with_suggestion(capsys) -> None:
    config = str(REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml")
    assert cli.main(["train", config, "--set", "trian.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebook: error:")
    assert "Did you mean 'train'?" in err
    assert cli.main(["train", config, "--set", "train.lerning_rate=0.001"]) == 2
    assert "Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_cli_missing_config_exits_2(capsys, tmp_path) -> None:
    assert cli.main(["prepare", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_cli_resume_without_a_run_exits_2(tiny_model_dir, tiny_dataset, tmp_path, capsys) -> None:
    config_path = tmp_path / "c.yaml"
    save_config(make_config(tiny_model_dir, tiny_dataset, tmp_path / "run"), config_path)
    assert cli.main(["train", str(config_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunebook: error: --resume: no run in") and "Traceback" not in err


def test_cli_prepare_writes_dataset_and_stats(tiny_model_dir, tiny_dataset, tmp_path, capsys) -> None:
    config_path = tmp_path / "c.yaml"
    save_config(make_config(tiny_model_dir, tiny_dataset, tmp_path / "run"), config_path)
    assert cli.main(["prepare", str(config_path), "--out", str(tmp_path / "prepared")]) == 0
    stats = json.loads((tmp_path / "prepared" / "stats.json").read_text())
    assert stats["validation"]["split_sizes"] == {"train": 24, "validation": 3, "test": 3}
    assert stats["train_token_lengths"]["count"] == 24
    assert stats["train_token_lengths"]["over_max_length"] == 0  # max_length null: fits the longest
    assert (tmp_path / "prepared" / "length_histogram.png").is_file()
    from datasets import load_from_disk

    saved = load_from_disk(str(tmp_path / "prepared" / "dataset"))
    assert sorted(saved) == ["test", "train", "validation"]
    assert set(saved["train"].column_names) == {"input_ids", "labels", "length", "row"}
    out = capsys.readouterr().out
    # The first training rows as the recipe reads them, each named by file and line.
    first = saved["train"][0]["row"]
    assert f"train.jsonl, line {first}:" in out and "written to" in out


def test_preview_shows_label_names_whole_answers_and_row_numbers() -> None:
    from datasets import Dataset, DatasetDict

    from tunebook.prepare import Prepared, preview_examples

    raw = DatasetDict(train=Dataset.from_list([
        {"text": "Title\nbody " + "x" * 300, "label": 3, "row": 2},
        {"text": "Second", "label": 0, "row": 3}]))
    report = {"sources": {"train": "news.parquet"}, "row_numbers": {"train": "row"},
              "labels": ["World", "Sports", "Business", "Sci/Tech"]}
    preview = preview_examples(Prepared(raw, raw, report, {}), count=1, width=40).splitlines()
    assert preview == ["news.parquet, row 2:", "  text        Title | body " + "x" * 24 + "...",
                       "  label       3 (Sci/Tech)"]
    answer = '{"person": ["' + "Ada " * 100 + '"]}'
    raw = DatasetDict(train=Dataset.from_list([{"input": "Ada spoke.", "output": answer, "row": 7}]))
    preview = preview_examples(Prepared(raw, raw, {"sources": {"train": "t.conll"}, "row_numbers": {"train": "line"}},
                                        {}), width=40)
    assert preview.splitlines()[0] == "t.conll, line 7:" and answer in preview  # the answer is never cut


def test_own_csv_with_other_column_names_trains_by_config_only(tiny_model_dir, tmp_path) -> None:
    """A user's CSV (question/context/reply columns) trains with nothing changed but data.columns."""
    import csv

    path = tmp_path / "tickets.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ticket_id", "question", "context", "reply"])
        writer.writeheader()
        for i in range(30):
            writer.writerow({"ticket_id": i, "question": f"How do I reset device {i}?",
                             "context": "" if i % 2 else f"Model R{i}", "reply": f"Hold the button for {i} seconds."})
    config = make_config(tiny_model_dir, path, tmp_path / "run", **{
        "data.columns": {"instruction": "question", "input": "context", "output": "reply"},
        "train.max_steps": 2, "train.save_steps": 2, "train.eval_steps": 2})
    result = run_training(config)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert metrics["trained_tokens"] == sum(b["trained_tokens"] for b in metrics["batch_log"]) > 0
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
