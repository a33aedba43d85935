"""Every config field reaches the object it is meant for.

A setting that is parsed, checked and then dropped on the way (``gradient_accumulation_steps`` not
handed to `TrainingArguments`, a scheduler forced to linear) leaves a run that looks configured
and is not. :data:`PASS_THROUGH` maps each field of the config dataclasses to a non-default value
and a check that finds that value in the library object built from it: the Trainer's
`TrainingArguments`, peft's `LoraConfig`, the `from_pretrained` call (with its
`BitsAndBytesConfig`), the data splits, the collator, the generation calls.

The list of fields comes from the dataclasses themselves, so a new field without an entry here
fails :func:`test_field_reaches_its_object` until someone says where it goes and checks it.

How the training wiring is observed without training: `run_training` runs for real up to the
point where it builds the Trainer, which is replaced by a stand-in that records its arguments and
stops; `from_pretrained` is wrapped to record what it is asked for (and to load the tiny model
unquantized, which keeps it fast).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from conftest import make_tiny_llama, write_rows
from transformers import BitsAndBytesConfig, DataCollatorWithPadding
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from tunebook import models, train, trainer
from tunebook.config import RunConfig, apply_overrides, load_config
from tunebook.data import load_and_validate
from tunebook.decisions import Decisions, choose_optimizer, hardware_decisions
from tunebook.environment import Decision, choose_device, choose_precision
from tunebook.evaluation import _evaluate_model, evaluation_split
from tunebook.formatting import IGNORE_INDEX, build_prompt, prompt_messages
from tunebook.lora import apply_lora, make_lora_config
from tunebook.prepare import prepare_tokenized

# Section name -> its dataclass, read from RunConfig: a new section is covered too.
SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}
ALL_FIELDS = [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]

INSTRUCTION_ROWS = [{"instruction": f"What is {i} plus {i}?", "input": "" if i % 3 else f"Show work for {i}.",
                     "output": f"{i} plus {i} is {2 * i}." + " Indeed." * (i % 5)} for i in range(40)]
# Label names with a space and a slash, listed in an order that is not alphabetical.
TOPICS = ["Sports", "World News", "Sci/Tech", "Business"]
TOPIC_ROWS = [{"text": f"{label} story number {i}, told at length.", "label": label}
              for i in range(6) for label in TOPICS]


class _TrainerBuilt(Exception):
    """Raised by the stand-in Trainer: everything the run wires together has been recorded."""


class _Spy:
    """Wraps an Auto* class: records each ``from_pretrained(source, **kwargs)`` call and loads unquantized."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def from_pretrained(self, source, **kwargs):
        self.calls.append((source, kwargs))
        kwargs = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "device_map")}
        return self.real.from_pretrained(source, **kwargs)


@dataclass
class Wired:
    """What `run_training` hands to the Trainer, and what it asked `from_pretrained` for."""

    trainer_kwargs: dict
    model_calls: list
    tokenizer_calls: list
    saved_config: RunConfig | None  # the run folder's config.yaml as the Trainer is built (a failed
    # run removes it again, so it is read at that moment)

    @property
    def args(self):
        return self.trainer_kwargs["args"]


class Ctx:
    """Fixtures a check may need: a tokenizer, the tiny model folder, files, and the wiring."""

    def __init__(self, tmp_path: Path, tokenizer, model_dir: Path):
        self.tmp_path, self.tokenizer, self.model_dir = tmp_path, tokenizer, model_dir
        self.instruction_file = write_rows(tmp_path / "instr" / "train.jsonl", INSTRUCTION_ROWS)
        self.topics_file = write_rows(tmp_path / "topics" / "train.jsonl", TOPIC_ROWS)

    def write(self, rows: list[dict], name: str, folder: str = "extra") -> Path:
        return write_rows(self.tmp_path / folder / name, rows)

    def wire(self, config: RunConfig) -> Wired:
        """Run `run_training(config)` until the Trainer is built; return what it was given."""
        recorded: dict = {}

        class StandInTrainer:
            def __init__(self, **kwargs):
                recorded.update(kwargs)
                saved = Path(config.train.output_dir) / "config.yaml"
                recorded["saved_config"] = load_config(saved) if saved.is_file() else None
                raise _TrainerBuilt

        with pytest.MonkeyPatch.context() as mp:
            model_spies = {name: _Spy(getattr(models, name))
                           for name in ("AutoModelForCausalLM", "AutoModelForSequenceClassification")}
            tokenizer_spy = _Spy(models.AutoTokenizer)
            for name, spy in model_spies.items():
                mp.setattr(models, name, spy)
            mp.setattr(models, "AutoTokenizer", tokenizer_spy)
            mp.setattr(train, "TunebookTrainer", StandInTrainer)
            with pytest.raises(_TrainerBuilt):
                train.run_training(config)
        calls = [c for spy in model_spies.values() for c in spy.calls]
        saved_config = recorded.pop("saved_config")
        return Wired(recorded, calls, tokenizer_spy.calls, saved_config)

    def training_arguments(self, config: RunConfig):
        return train.training_arguments(config, Path(config.train.output_dir), "fp32", "adamw_torch", has_eval=True)

    def tiny_llama(self):
        tok = self.tokenizer
        return make_tiny_llama(len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


@dataclass
class Case:
    """A field's non-default value, the companion settings it needs, and the check that finds it."""

    value: Any  # or a callable(ctx) -> value, for paths
    check: Callable[[RunConfig, Ctx], None]
    extra: dict = field(default_factory=dict)


PASS_THROUGH: dict[str, Case] = {}


def passes(key: str, value: Any, **extra: Any):
    def register(check: Callable[[RunConfig, Ctx], None]):
        assert key not in PASS_THROUGH, f"two checks for {key}"
        PASS_THROUGH[key] = Case(value, check, {k.replace("__", "."): v for k, v in extra.items()})
        return check
    return register


CLASSIFICATION = {"model__task": "sequence-classification", "data__recipe": "classification",
                  "data__path": lambda ctx: str(ctx.topics_file)}

# ---------------------------------------------------------------- model: the from_pretrained call


@passes("model.name", lambda ctx: str(ctx.model_dir))
def _model_name(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    assert [source for source, _ in wired.model_calls] == [config.model.name]
    assert [source for source, _ in wired.tokenizer_calls] == [config.model.name]
    assert wired.trainer_kwargs["model"].base_model.model.config.hidden_size == 64  # the tiny model itself
    # The tokenizer goes to the Trainer too: checkpoints carry it, so a resumed run has the same one.
    assert wired.trainer_kwargs["processing_class"].name_or_path == config.model.name


@passes("model.task", "sequence-classification", data__recipe="classification",
        data__path=lambda ctx: str(ctx.topics_file))
def _model_task(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    ((_, kwargs),) = wired.model_calls
    assert kwargs["num_labels"] == 4 and kwargs["id2label"] == dict(enumerate(sorted(TOPICS)))
    model = wired.trainer_kwargs["model"]
    assert type(model.base_model.model).__name__ == "LlamaForSequenceClassification"
    assert model.peft_config["default"].task_type == "SEQ_CLS"
    assert isinstance(wired.trainer_kwargs["data_collator"], DataCollatorWithPadding)


@passes("model.quantization", "4bit")
def _model_quantization(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    ((_, kwargs),) = wired.model_calls
    quantization = kwargs["quantization_config"]
    assert isinstance(quantization, BitsAndBytesConfig)
    assert quantization.load_in_4bit and not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
    # The 4-bit layers compute in the dtype the rest of the model is stored in.
    assert quantization.bnb_4bit_compute_dtype == kwargs["dtype"]
    assert kwargs["device_map"] == ("cpu" if not torch.cuda.is_available() else {"": 0})


@passes("model.trust_remote_code", True)
def _model_trust_remote_code(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    assert [kwargs["trust_remote_code"] for _, kwargs in wired.model_calls] == [True]
    assert [kwargs["trust_remote_code"] for _, kwargs in wired.tokenizer_calls] == [True]


# ---------------------------------------------------------------- data: reading and splitting


@passes("data.path", lambda ctx: str(ctx.write([{"instruction": f"Other {i}?", "output": f"O{i}."}
                                                  for i in range(20)], "other.jsonl")))
def _data_path(config: RunConfig, ctx: Ctx) -> None:
    data, report = load_and_validate(config.data)
    assert report["sources"] == {"train": config.data.path}
    assert sorted(ex["instruction"] for split in data.values() for ex in split) == sorted(
        f"Other {i}?" for i in range(20))


@passes("data.recipe", "chat", data__path=lambda ctx: str(ctx.write(
    [{"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]}
     for i in range(20)], "chat.jsonl")))
def _data_recipe(config: RunConfig, ctx: Ctx) -> None:
    data, _ = load_and_validate(config.data)
    assert set(data["train"].column_names) == {"messages", "row"}
    prepared = prepare_tokenized(config, ctx.tokenizer)
    example = prepared.tokenized["train"][0]
    answer = [t for t, lab in zip(example["input_ids"], example["labels"]) if lab != IGNORE_INDEX]
    assert ctx.tokenizer.decode(answer, skip_special_tokens=True) == data["train"][0]["messages"][-1]["content"]


@passes("data.columns", {"instruction": "question", "output": "answer"}, data__path=lambda ctx: str(ctx.write(
    [{"question": f"Q{i}?", "answer": f"A{i}.", "output": "not this"} for i in range(20)], "mapped.jsonl")))
def _data_columns(config: RunConfig, ctx: Ctx) -> None:
    data, _ = load_and_validate(config.data)
    for ex in data["train"]:
        assert ex["output"] == ex["instruction"].replace("Q", "A").replace("?", ".")


@passes("data.csv_header", ["instruction", "output"], data__path=lambda ctx: str(
    _headerless_csv(ctx.tmp_path / "extra" / "noheader.csv")))
def _data_csv_header(config: RunConfig, ctx: Ctx) -> None:
    data, report = load_and_validate(config.data)
    assert report["rows"] == {"train": 20}  # the first line is a row, not a header
    rows = sorted((ex["row"], ex["instruction"]) for split in data.values() for ex in split)
    assert rows[0] == (1, "Q0?")


def _headerless_csv(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"Q{i}?,A{i}.\n" for i in range(20)))
    return path


@passes("data.instruction", "Name the number.", data__path=lambda ctx: str(ctx.write(
    [{"input": f"{i}", "output": f"N{i}."} for i in range(20)], "noinstr.jsonl")))
def _data_instruction(config: RunConfig, ctx: Ctx) -> None:
    prepared = prepare_tokenized(config, ctx.tokenizer)
    for split in ("train", "test"):
        example = prepared.raw[split][0]
        prompt = build_prompt(ctx.tokenizer, prompt_messages(example, config.data))
        assert f"Name the number.\n\n{example['input']}" in prompt
    assert "Name the number." in ctx.tokenizer.decode(prepared.tokenized["train"][0]["input_ids"])


@passes("data.system_prompt", "You answer in one word.")
def _data_system_prompt(config: RunConfig, ctx: Ctx) -> None:
    prepared = prepare_tokenized(config, ctx.tokenizer)
    messages = prompt_messages(prepared.raw["test"][0], config.data)
    assert messages[0] == {"role": "system", "content": "You answer in one word."}
    text = ctx.tokenizer.decode(prepared.tokenized["train"][0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou answer in one word.<|im_end|>")


@passes("data.labels", TOPICS, **CLASSIFICATION)
def _data_labels(config: RunConfig, ctx: Ctx) -> None:
    data, report = load_and_validate(config.data)
    assert report["labels"] == TOPICS  # the configured order, not the sorted one
    by_text = {ex["text"]: ex["label"] for split in data.values() for ex in split}
    for row in TOPIC_ROWS:
        assert by_text[row["text"]] == TOPICS.index(row["label"])
    ((_, kwargs),) = ctx.wire(config).model_calls  # the new head's ids follow the same order
    assert kwargs["id2label"] == dict(enumerate(TOPICS)) and kwargs["label2id"]["Sci/Tech"] == 2


@passes("data.first_label_id", 1, data__labels=["neg", "neu", "pos"], model__task="sequence-classification",
        data__recipe="classification", data__path=lambda ctx: str(ctx.write(
            [{"text": f"text {i}", "label": 1 + i % 3} for i in range(30)], "onebased.jsonl")))
def _data_first_label_id(config: RunConfig, ctx: Ctx) -> None:
    data, report = load_and_validate(config.data)
    assert report["labels"] == ["neg", "neu", "pos"]
    for ex in (ex for split in data.values() for ex in split):
        assert ex["label"] == int(ex["text"].split()[1]) % 3  # file label 1 + i % 3 -> id i % 3


@passes("data.max_length", 60)
def _data_max_length(config: RunConfig, ctx: Ctx) -> None:
    unlimited = prepare_tokenized(apply_overrides(config, {"data.max_length": None}), ctx.tokenizer)
    limited = prepare_tokenized(config, ctx.tokenizer)
    for split in ("train", "validation"):
        lengths = unlimited.tokenized[split]["length"]
        assert any(n > 60 for n in lengths) and any(n <= 60 for n in lengths)  # the value matters here
        assert limited.tokenized[split]["length"] == [n for n in lengths if n <= 60]
    assert limited.tokenized["test"]["length"] == unlimited.tokenized["test"]["length"]  # test rows all kept
    assert limited.stats["max_length"] == 60
    assert any(n > 60 for n in limited.tokenized["test"]["length"])


@passes("data.validation_fraction", 0.3)
def _data_validation_fraction(config: RunConfig, ctx: Ctx) -> None:
    _, report = load_and_validate(config.data)
    assert report["split_sizes"] == {"train": 24, "validation": 12, "test": 4}  # of 40 rows


@passes("data.test_fraction", 0.25)
def _data_test_fraction(config: RunConfig, ctx: Ctx) -> None:
    _, report = load_and_validate(config.data)
    assert report["split_sizes"] == {"train": 26, "validation": 4, "test": 10}


@passes("data.drop_leaked_rows", True, data__path=lambda ctx: str(_leaky_folder(ctx)))
def _data_drop_leaked_rows(config: RunConfig, ctx: Ctx) -> None:
    data, report = load_and_validate(config.data)
    assert report["dropped_leaked_rows"] == {"test": 2}
    assert sorted(data["test"]["instruction"]) == ["New 0?", "New 1?", "New 2?"]


def _leaky_folder(ctx: Ctx) -> Path:
    train_rows = [{"instruction": f"Old {i}?", "output": f"O{i}."} for i in range(20)]
    ctx.write(train_rows, "train.jsonl", folder="leaky")
    ctx.write([{"instruction": f"Val {i}?", "output": "x"} for i in (3, 4)], "validation.jsonl", folder="leaky")
    test = ctx.write(train_rows[:2] + [{"instruction": f"New {i}?", "output": "y"} for i in range(3)],
                     "test.jsonl", folder="leaky")
    return test.parent


@passes("data.seed", 5)
def _data_seed(config: RunConfig, ctx: Ctx) -> None:
    def split_rows(seed: int) -> dict[str, list[int]]:
        data, _ = load_and_validate(dataclasses.replace(config.data, seed=seed))
        return {split: d["row"] for split, d in data.items()}

    assert split_rows(config.data.seed) == split_rows(config.data.seed)
    assert split_rows(config.data.seed) != split_rows(0)
    # The sample of data.max_train_examples follows the same seed.
    capped = dataclasses.replace(config.data, max_train_examples=5)
    assert (load_and_validate(capped)[0]["train"]["row"]
            != load_and_validate(dataclasses.replace(capped, seed=0))[0]["train"]["row"])


@passes("data.max_train_examples", 7)
def _data_max_train_examples(config: RunConfig, ctx: Ctx) -> None:
    data, report = load_and_validate(config.data)
    assert len(data["train"]) == 7 and report["split_sizes"]["train"] == 7
    assert len(data["validation"]) == 4 and len(data["test"]) == 4  # held-out splits are not capped
    uncapped, _ = load_and_validate(dataclasses.replace(config.data, max_train_examples=None))
    assert set(data["train"]["row"]) < set(uncapped["train"]["row"])


# ---------------------------------------------------------------- lora: peft's LoraConfig and the model


def _lora_modules(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A")}


@passes("lora.r", 5)
def _lora_r(config: RunConfig, ctx: Ctx) -> None:
    assert make_lora_config(ctx.tiny_llama(), config.lora).r == 5
    model = apply_lora(ctx.tiny_llama(), config.lora, verbose=False)
    assert {m.lora_A["default"].weight.shape[0] for m in _lora_modules(model).values()} == {5}


@passes("lora.alpha", 24.0)
def _lora_alpha(config: RunConfig, ctx: Ctx) -> None:
    assert make_lora_config(ctx.tiny_llama(), config.lora).lora_alpha == 24.0
    model = apply_lora(ctx.tiny_llama(), config.lora, verbose=False)
    assert {m.scaling["default"] for m in _lora_modules(model).values()} == {24.0 / config.lora.r}


@passes("lora.dropout", 0.2)
def _lora_dropout(config: RunConfig, ctx: Ctx) -> None:
    assert make_lora_config(ctx.tiny_llama(), config.lora).lora_dropout == 0.2
    model = apply_lora(ctx.tiny_llama(), config.lora, verbose=False)
    assert {m.lora_dropout["default"].p for m in _lora_modules(model).values()} == {0.2}


@passes("lora.target_modules", ["q_proj", "down_proj"])
def _lora_target_modules(config: RunConfig, ctx: Ctx) -> None:
    assert sorted(make_lora_config(ctx.tiny_llama(), config.lora).target_modules) == ["down_proj", "q_proj"]
    model = apply_lora(ctx.tiny_llama(), config.lora, verbose=False)
    assert sorted({name.rsplit(".", 1)[-1] for name in _lora_modules(model)}) == ["down_proj", "q_proj"]


@passes("lora.bias", "lora_only")
def _lora_bias(config: RunConfig, ctx: Ctx) -> None:
    assert make_lora_config(ctx.tiny_llama(), config.lora).bias == "lora_only"
    model = apply_lora(ctx.tiny_llama(), config.lora, verbose=False)
    assert model.peft_config["default"].bias == "lora_only"


# ---------------------------------------------------------------- train: TrainingArguments and the run


@passes("train.output_dir", lambda ctx: str(ctx.tmp_path / "elsewhere" / "run"))
def _train_output_dir(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    assert wired.args.output_dir == str(Path(config.train.output_dir) / "checkpoints")
    assert wired.saved_config == config


@passes("train.max_steps", 37)
def _train_max_steps(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).max_steps == 37


@passes("train.per_device_batch_size", 3)
def _train_per_device_batch_size(config: RunConfig, ctx: Ctx) -> None:
    args = ctx.training_arguments(config)
    assert args.per_device_train_batch_size == args.per_device_eval_batch_size == 3
    assert args.train_batch_size == 3 * max(1, args.n_gpu)


@passes("train.gradient_accumulation_steps", 4)
def _train_gradient_accumulation_steps(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).gradient_accumulation_steps == 4


@passes("train.learning_rate", 3e-3)
def _train_learning_rate(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).learning_rate == 3e-3
    guard = train.DivergenceGuard(config.train.learning_rate)
    with pytest.raises(train.TrainingDiverged, match="learning_rate=0.003 is too high"):
        for step, loss in ((1, 1.0), (2, 9.0)):
            guard.on_log(None, type("State", (), {"global_step": step})(), None, logs={"loss": loss})


@passes("train.warmup_ratio", 0.25, train__max_steps=40)
def _train_warmup_ratio(config: RunConfig, ctx: Ctx) -> None:
    args = ctx.training_arguments(config)
    assert args.get_warmup_steps(args.max_steps) == 10  # a quarter of 40 steps


@passes("train.weight_decay", 0.1)
def _train_weight_decay(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).weight_decay == 0.1


@passes("train.lr_scheduler", "constant_with_warmup")
def _train_lr_scheduler(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).lr_scheduler_type == SchedulerType.CONSTANT_WITH_WARMUP


@passes("train.max_grad_norm", 0.3)
def _train_max_grad_norm(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).max_grad_norm == 0.3


@passes("train.precision", "bf16")
def _train_precision(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    assert wired.args.bf16 and not wired.args.fp16
    ((_, kwargs),) = wired.model_calls
    assert kwargs["dtype"] == torch.bfloat16  # the frozen base is stored in the compute dtype
    assert hardware_decisions(config).precision.value == "bf16"


@passes("train.gradient_checkpointing", True)
def _train_gradient_checkpointing(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.wire(config).trainer_kwargs["model"].base_model.model.is_gradient_checkpointing


@passes("train.group_by_length", False)
def _train_group_by_length(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).train_sampling_strategy == "random"
    assert ctx.training_arguments(apply_overrides(config, {"train.group_by_length": True})
                                  ).train_sampling_strategy == "group_by_length"


@passes("train.pad_to_length", 96)
def _train_pad_to_length(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    rows = [{k: v for k, v in ex.items() if k in ("input_ids", "labels")}
            for ex in wired.trainer_kwargs["train_dataset"].select(range(3))]
    batch = wired.trainer_kwargs["data_collator"](rows)
    # Labels start at the first trained position (formatting.TrainedPositionsOnly); inputs keep all 96.
    kept = len(batch.get("logits_to_keep", range(96)))
    assert batch["input_ids"].shape == (3, 96) and batch["labels"].shape == (3, kept)


@passes("train.logging_steps", 3)
def _train_logging_steps(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).logging_steps == 3


@passes("train.eval_steps", 7)
def _train_eval_steps(config: RunConfig, ctx: Ctx) -> None:
    args = ctx.training_arguments(config)
    assert args.eval_steps == 7 and args.eval_strategy == "steps"


@passes("train.save_steps", 9)
def _train_save_steps(config: RunConfig, ctx: Ctx) -> None:
    args = ctx.training_arguments(config)
    assert args.save_steps == 9 and args.save_strategy == "steps"


@passes("train.save_total_limit", 5)
def _train_save_total_limit(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.training_arguments(config).save_total_limit == 5


@passes("train.optim", "sgd")
def _train_optim(config: RunConfig, ctx: Ctx) -> None:
    assert ctx.wire(config).args.optim == OptimizerNames.SGD


@passes("train.seed", 3)
def _train_seed(config: RunConfig, ctx: Ctx) -> None:
    args = ctx.training_arguments(config)
    assert args.seed == 3 and args.data_seed == 3
    # The adapter's random A matrices come from the same seed (build_model seeds before creating them).
    decisions = Decisions(choose_device(), choose_precision("fp32", "cpu"), choose_optimizer(config, "cpu"))

    base = ctx.tiny_llama()  # built once: building one reseeds torch

    def first_lora_a(seed: int) -> torch.Tensor:
        seeded = apply_overrides(config, {"train.seed": seed})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(train, "load_model", lambda *a, **k: copy.deepcopy(base))
            model = train.build_model(seeded, decisions, None)
        return next(m.lora_A["default"].weight for m in _lora_modules(model).values()).detach().clone()

    assert torch.equal(first_lora_a(3), first_lora_a(3)) and not torch.equal(first_lora_a(3), first_lora_a(4))


@passes("train.eval_loss_examples", 2)
def _train_eval_loss_examples(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    assert len(wired.trainer_kwargs["eval_dataset"]) == 2 and wired.args.eval_strategy == "steps"


@passes("train.release_host_memory", False)
def _train_release_host_memory(config: RunConfig, ctx: Ctx) -> None:
    asked = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tunebook.decisions.return_freed_tensors_to_os",
                   lambda device, enabled: asked.append(enabled) or Decision(False, "recorded"))
        hardware_decisions(config)
        hardware_decisions(apply_overrides(config, {"train.release_host_memory": True}))
    assert asked == [False, True]


SPAM_ROWS = [{"text": f"win a prize {i}", "label": "spam"} if i % 4 == 0 else
             {"text": f"see you later {i}", "label": "ham"} for i in range(40)]


@passes("train.class_weights", "balanced", model__task="sequence-classification", data__recipe="classification",
        data__path=lambda ctx: str(ctx.write(SPAM_ROWS, "spam.jsonl")))
def _train_class_weights(config: RunConfig, ctx: Ctx) -> None:
    wired = ctx.wire(config)
    train_labels = wired.trainer_kwargs["train_dataset"]["label"]
    rows, spam = len(train_labels), sum(train_labels)  # ids by sorted name: ham 0, spam 1
    loss = wired.trainer_kwargs["compute_loss_func"]
    assert loss.weights.tolist() == pytest.approx([rows / (2 * (rows - spam)), rows / (2 * spam)])
    assert spam < rows - spam  # the rare class weighs more
    # The weighted mean: sum(w[y] * nll) / sum(w[y]), on hand-made logits.
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 1])
    nll = -torch.log_softmax(logits, dim=-1)[torch.arange(3), labels]
    w = loss.weights[labels]
    assert loss({"logits": logits}, labels).item() == pytest.approx(((w * nll).sum() / w.sum()).item())
    plain = apply_overrides(config, {"train.class_weights": None})
    assert ctx.wire(plain).trainer_kwargs["compute_loss_func"] is None  # the default: the model's own loss


def test_balanced_class_weights_by_hand() -> None:
    # 4 rows, 2 classes present of 3: 4 / (3 x 3) and 4 / (3 x 1); an absent class keeps weight 1.
    assert trainer.balanced_class_weights([0, 0, 0, 2], 3).tolist() == pytest.approx([4 / 9, 1.0, 4 / 3])


# ---------------------------------------------------------------- eval: the split and the generation calls


@passes("eval.split", "validation")
def _eval_split(config: RunConfig, ctx: Ctx) -> None:
    split = evaluation_split(config, ctx.tokenizer)
    raw, _ = load_and_validate(config.data)
    assert split.name == "validation" and split.raw["row"] == raw["validation"]["row"]
    assert split.tokenized["row"] == raw["validation"]["row"]


@passes("eval.max_examples", 2)
def _eval_max_examples(config: RunConfig, ctx: Ctx) -> None:
    split = evaluation_split(config, ctx.tokenizer)
    assert len(split) == 2 and split.total == 4  # its first 2 of the 4 test rows
    assert split.raw["row"] == load_and_validate(config.data)[0]["test"]["row"][:2]
    assert len(split.validation) == 2


def _generation_calls(config: RunConfig, ctx: Ctx) -> list[dict]:
    """_evaluate_model on a tiny model; the keyword arguments and batch size of each generate() call."""
    model, calls = ctx.tiny_llama(), []
    real_generate = model.generate

    def spy(**kwargs):
        calls.append({**kwargs, "rows": kwargs["input_ids"].shape[0]})
        return real_generate(**kwargs)

    model.generate = spy
    split = evaluation_split(apply_overrides(config, {"eval.split": "validation"}), ctx.tokenizer)
    result = _evaluate_model(model, ctx.tokenizer, config, split, ctx.tmp_path, "base")
    assert result["num_examples"] == 4
    return calls


@passes("eval.batch_size", 3, eval__max_new_tokens=2)
def _eval_batch_size(config: RunConfig, ctx: Ctx) -> None:
    assert [call["rows"] for call in _generation_calls(config, ctx)] == [3, 1]


@passes("eval.max_new_tokens", 3)
def _eval_max_new_tokens(config: RunConfig, ctx: Ctx) -> None:
    assert {call["max_new_tokens"] for call in _generation_calls(config, ctx)} == {3}


# ---------------------------------------------------------------- the tests


@pytest.fixture
def ctx(tmp_path, smollm_tokenizer, tiny_model_dir) -> Ctx:
    return Ctx(tmp_path, smollm_tokenizer, tiny_model_dir)


def base_config(ctx: Ctx) -> RunConfig:
    """Defaults, except where the defaults point at the embedded model and data (tiny ones here)."""
    return apply_overrides(RunConfig(), {"model.name": str(ctx.model_dir), "data.path": str(ctx.instruction_file),
                                         "train.output_dir": str(ctx.tmp_path / "run")})


def test_every_field_has_exactly_one_check() -> None:
    """The table covers the dataclasses' fields exactly: no field without a check, no stale entry."""
    assert sorted(PASS_THROUGH) == sorted(ALL_FIELDS)


@pytest.mark.parametrize("key", ALL_FIELDS)
def test_field_reaches_its_object(key: str, ctx: Ctx) -> None:
    case = PASS_THROUGH.get(key)
    assert case is not None, f"{key} has no pass-through check: add one to PASS_THROUGH in {__file__}"
    def resolve(value):  # a callable value is a path under this test's tmp_path
        return value(ctx) if callable(value) else copy.deepcopy(value)

    overrides = {k: resolve(v) for k, v in case.extra.items()}
    config = apply_overrides(base_config(ctx), {**overrides, key: resolve(case.value)})
    section, name = key.split(".")
    default = getattr(SECTIONS[section](), name)
    assert getattr(getattr(config, section), name) != default, f"{key}: the checked value must not be the default"
    case.check(config, ctx)


def test_a_dropped_field_is_caught(ctx: Ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks bite: gradient accumulation not handed to TrainingArguments fails its check."""
    real = train.TrainingArguments
    monkeypatch.setattr(train, "TrainingArguments",
                        lambda **kwargs: real(**{**kwargs, "gradient_accumulation_steps": 1}))
    config = apply_overrides(base_config(ctx), {"train.gradient_accumulation_steps": 4})
    with pytest.raises(AssertionError):
        PASS_THROUGH["train.gradient_accumulation_steps"].check(config, ctx)


def test_sections_json_round_trip_keeps_every_field(ctx: Ctx) -> None:
    """The saved config.yaml carries every field (the run's identity and --resume read it back)."""
    config = base_config(ctx)
    values = {}
    for key, case in PASS_THROUGH.items():
        if key.startswith(("model.task", "data.recipe", "data.first_label_id", "data.labels",
                              "train.class_weights")):
            continue  # these need each other (classification); covered by their own checks
        value = case.value(ctx) if callable(case.value) else case.value
        values[key] = value
    config = apply_overrides(config, values)
    path = ctx.tmp_path / "saved.yaml"
    from tunebook.config import save_config

    save_config(config, path)
    assert load_config(path) == config
    assert json.loads(json.dumps(dataclasses.asdict(config))) == dataclasses.asdict(config)


def test_fixed_trainer_settings(ctx: Ctx) -> None:
    """What tunebook always asks of the Trainer, whatever the config."""
    config = base_config(ctx)
    args = train.training_arguments(config, Path("/somewhere/run"), "fp32", "adamw_torch", has_eval=True)
    assert args.output_dir == "/somewhere/run/checkpoints"
    assert args.logging_first_step and not args.logging_nan_inf_filter and args.prediction_loss_only
    assert args.save_strategy == "steps" and args.eval_strategy == "steps" and args.report_to == []
    assert args.remove_unused_columns and args.ddp_find_unused_parameters is False
    assert args.use_cpu is (not torch.cuda.is_available()) and not args.bf16 and not args.fp16
    assert args.optim == OptimizerNames.ADAMW_TORCH
    no_eval = train.training_arguments(config, Path("/x"), "fp32", "adamw_torch", has_eval=False)
    assert no_eval.eval_strategy == "no"


def test_pad_to_length_shorter_than_the_longest_example(ctx: Ctx) -> None:
    config = apply_overrides(base_config(ctx), {"train.pad_to_length": 50})
    with pytest.raises(train.ConfigError) as info:
        train.prepare_training_data(config, ctx.tokenizer)
    assert str(info.value) == ("train.pad_to_length=50 is shorter than the longest example (69 tokens); raise it, or "
                               "set it to null for dynamic padding.")
    fits = train.prepare_training_data(apply_overrides(config, {"train.pad_to_length": 69}), ctx.tokenizer)
    assert len(fits.tokenized["validation"]) == 4  # the default cap (200) is above the 4 rows


@pytest.mark.parametrize("precision, bf16, fp16",
                         [("bf16", True, False), ("fp16", False, True), ("fp32", False, False)])
def test_precision_reaches_the_trainer_flags(ctx: Ctx, precision: str, bf16: bool, fp16: bool) -> None:
    args = train.training_arguments(base_config(ctx), ctx.tmp_path, precision, "adamw_torch", has_eval=False)
    assert (args.bf16, args.fp16) == (bf16, fp16)


def test_csv_header_reaches_every_file_of_a_folder(ctx: Ctx) -> None:
    folder = ctx.tmp_path / "csvs"
    _headerless_csv(folder / "train.csv")
    (folder / "test.csv").write_text("".join(f"T{i}?,B{i}.\n" for i in range(5)))
    config = apply_overrides(base_config(ctx), {"data.path": str(ctx.tmp_path / "csvs"),
                                                "data.csv_header": ["instruction", "output"]})
    _, report = load_and_validate(config.data)
    assert report["rows"] == {"train": 20, "test": 5}  # no first line taken as a header, in either file
