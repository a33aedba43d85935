"""Bad inputs and faults, each run through the real command line: what a user gets for each mistake.

Every :class:`Case` builds a faulty config, data file, model folder or run folder in a fresh
directory, runs one ``tunebook`` command in-process (``tunebook.cli.main``) and says which
fragments the message must contain: what is wrong, where (file and line, row or config key), the
value and the fix. :func:`run_case` judges the outcome with one of the verdicts below, and
:func:`render_table` writes the human-readable table ``docs/bad_inputs.md``.

Verdicts:

- ``good``: exit status 2, one message with every expected fragment, no traceback, and no file
  written, changed or removed in an existing run folder (nor left behind in a new one)
- ``unclear``: it stopped (exit 2), but the message misses what, where or the fix
- ``silently wrong``: it went on (exit 0) although the input is wrong, or a failed command left
  files in a run folder (a config.yaml from a run that never started blocks the next attempt)
- ``crash``: an exception other than tunebook's own escaped (a traceback, exit 1)
- ``lost work``: a file that existed before the command was changed or removed

Models and data are tiny (a 2-layer random Llama saved with the SmolLM2 tokenizer, a 2-layer
random BERT with the MiniLM tokenizer, 30-row files), so the cases that train take seconds.

``tests/test_bad_inputs.py`` runs every case and checks the table;
``python tests/bad_inputs.py`` rewrites ``docs/bad_inputs.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import resource
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a Hub lookup fails at once instead of retrying for ~50 s
os.environ.setdefault("TQDM_DISABLE", "1")

import yaml  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = REPO_ROOT / "docs" / "bad_inputs.md"
VERDICTS = ("good", "unclear", "silently wrong", "crash", "lost work")
LABELS = ["World", "Sports", "Business"]


# ---------------------------------------------------------------- shared models, data and runs

def gen_rows(n: int = 30, start: int = 0) -> list[dict]:
    return [{"instruction": f"What is {i} plus {i}?", "input": "" if i % 3 else f"Show work for {i}.",
             "output": f"{i} plus {i} is {2 * i}."} for i in range(start, start + n)]


def cls_rows(per_label: int = 10, labels: list[str] = LABELS) -> list[dict]:
    return [{"text": f"{label} story number {i}" + " more" * (i % 5), "label": label}
            for i in range(per_label) for label in labels]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _set_dotted(values: dict, dotted: dict[str, Any]) -> dict:
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        values.setdefault(section, {})[name] = value
    return values


class Assets:
    """Models, data and finished runs that many cases copy; each is built on first use."""

    def __init__(self, root: Path):
        self.root = root

    @cached_property
    def tokenizer(self):
        from tunebook.models import load_tokenizer

        return load_tokenizer("smollm2-135m-instruct")

    def _llama(self, name: str, hidden: int = 64, nan: bool = False) -> Path:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = self.tokenizer
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False))
        if nan:
            with torch.no_grad():
                model.model.norm.weight[0] = float("nan")
        path = self.root / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path

    @cached_property
    def llama(self) -> Path:
        """A tiny random Llama (2 layers, hidden 64) with the SmolLM2 tokenizer."""
        return self._llama("tiny-llama")

    @cached_property
    def other_llama(self) -> Path:
        """Another base model: same vocabulary, hidden size 32."""
        return self._llama("other-llama", hidden=32)

    @cached_property
    def nan_llama(self) -> Path:
        """The tiny Llama with a NaN in its final norm: the first loss is NaN."""
        return self._llama("nan-llama", nan=True)

    @cached_property
    def bert(self) -> Path:
        """A tiny random BERT encoder with the MiniLM tokenizer."""
        import torch
        from transformers import BertConfig, BertModel

        from tunebook.models import load_tokenizer

        tok = load_tokenizer("minilm-l6")
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
        path = self.root / "tiny-bert"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path

    @cached_property
    def gen_data(self) -> Path:
        return write_jsonl(self.root / "gen" / "train.jsonl", gen_rows())

    @cached_property
    def cls_data(self) -> Path:
        return write_jsonl(self.root / "cls" / "train.jsonl", cls_rows())

    def base_values(self, kind: str, run_dir: Path) -> dict:
        values = {
            "model": {"name": str(self.llama)},
            "data": {"path": str(self.gen_data), "recipe": "instruction", "seed": 0},
            "lora": {"r": 4, "alpha": 8},
            "train": {"output_dir": str(run_dir), "max_steps": 4, "per_device_batch_size": 4, "learning_rate": 1e-3,
                      "warmup_ratio": 0.0, "precision": "fp32", "logging_steps": 1, "eval_steps": 2, "save_steps": 2,
                      "eval_loss_examples": 4, "seed": 7},
            "eval": {"max_examples": 3, "max_new_tokens": 4, "batch_size": 8},
        }
        if kind == "cls":
            values["model"].update(name=str(self.bert), task="sequence-classification")
            values["data"].update(path=str(self.cls_data), recipe="classification", labels=list(LABELS))
            values["eval"]["max_examples"] = None
        return values

    def _finished_run(self, kind: str) -> Path:
        from tunebook import cli

        run_dir = self.root / f"{kind}-run"
        config = self.root / f"{kind}-run.yaml"
        config.write_text(yaml.safe_dump(self.base_values(kind, run_dir), sort_keys=False))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = cli.main(["train", str(config)])
        if status != 0:
            raise RuntimeError(f"building the {kind} run template failed with exit status {status}")
        return run_dir

    @cached_property
    def gen_run(self) -> Path:
        """A finished 4-step generation run (checkpoint-2, checkpoint-4, adapter, metrics)."""
        return self._finished_run("gen")

    @cached_property
    def cls_run(self) -> Path:
        """A finished 4-step classification run with labels World, Sports, Business."""
        return self._finished_run("cls")


class Ctx:
    """One case's directory, with helpers that write configs, data and run folders into it."""

    def __init__(self, assets: Assets, directory: Path):
        self.assets, self.dir = assets, directory
        self.run = directory / "run"  # train.output_dir of every config written here
        self.patches: list[Callable[[], contextlib.AbstractContextManager]] = []
        self.read_only: list[Path] = []  # folders the command may not write (it then runs in a subprocess)

    def path(self, name: str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def config(self, values: dict[str, Any] | None = None, kind: str = "gen", name: str = "config.yaml",
               drop: tuple[str, ...] = ()) -> str:
        """A config file: the tiny base config with dotted `values` written over it (in the file)."""
        data = _set_dotted(self.assets.base_values(kind, self.run), values or {})
        for key in drop:
            section, name_ = key.split(".")
            data[section].pop(name_, None)
        path = self.path(name)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def text(self, name: str, content: str | bytes) -> str:
        path = self.path(name)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def rows(self, name: str, rows: list[dict]) -> str:
        from conftest import write_rows  # noqa: PLC0415 - tests/ is on sys.path in both entry points

        return str(write_rows(self.path(name), rows))

    def data(self, rows: list[dict] | None = None, name: str = "data/train.jsonl", **values) -> str:
        """A config whose data.path is a file of `rows` (a jsonl/csv/json/parquet name) in this case."""
        path = self.rows(name, rows) if rows is not None else str(self.path(name).parent)
        return self.config({"data.path": path, **values}, kind="cls" if values.get("data.recipe") == "classification"
                           else "gen")

    def finished_run(self, kind: str = "gen") -> Path:
        shutil.copytree(self.assets.gen_run if kind == "gen" else self.assets.cls_run, self.run)
        return self.run

    def interrupted_run(self, keep_checkpoints: tuple[int, ...] = (2, 4)) -> Path:
        """A copy of the finished run as a kill before its end leaves it: checkpoints, no adapter/metrics."""
        self.finished_run()
        shutil.rmtree(self.run / "adapter")
        (self.run / "metrics.json").unlink()
        for checkpoint in (self.run / "checkpoints").iterdir():
            if int(checkpoint.name.split("-")[1]) not in keep_checkpoints:
                shutil.rmtree(checkpoint)
        return self.run


# ---------------------------------------------------------------- faults the environment causes

@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail (EFBIG), as a full disk makes them fail mid-save."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def read_only_command(argv: list[str], paths: list[Path]) -> list[str]:
    """A command line that runs `tunebook argv` with `paths` read-only.

    As root (who may write anyway, as CI does) the paths are bind-mounted read-only in a private
    mount namespace, so writes fail as on a read-only disk; other users get the folders' write
    permission removed (see :func:`run_case`).
    """
    command = [sys.executable, "-m", "tunebook", *argv]
    if os.geteuid() != 0:
        return command
    mounts = " && ".join(f"mount --bind {p} {p} && mount -o remount,bind,ro {p} {p}" for p in paths)
    return ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]


# ---------------------------------------------------------------- cases

@dataclass
class Case:
    id: str
    group: str
    input: str  # what is wrong, as the table shows it
    build: Callable[[Ctx], list[str]]  # writes the case's files; returns the CLI arguments
    expect: tuple[str, ...]  # fragments the message must contain (what, where, value, fix)
    exit: int = 2  # 0: accepted on purpose, the fragments are then looked for in the output
    volatile: tuple[str, ...] = ()  # regexes whose matches the table shows as "…" (numbers that vary)
    slow: bool = False  # loads a model or trains (seconds rather than milliseconds)


CASES: list[Case] = []
# What a write into a read-only folder reports: as root (a read-only mount) or as a user (no permission).
_NOT_WRITABLE = r"<case>/run is on a read-only file system|no permission to write in <case>/run"


def case(id: str, group: str, input: str, expect: tuple[str, ...] | str, **kwargs) -> Callable:
    def register(build: Callable[[Ctx], list[str]]) -> Callable:
        CASES.append(Case(id, group, input, build, (expect,) if isinstance(expect, str) else tuple(expect), **kwargs))
        return build
    return register


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "", text.replace(" ", "-"))


def config_case(id: str, input: str, values: dict[str, Any], expect: tuple[str, ...] | str,
                command: str = "train", kind: str = "gen", **kwargs) -> None:
    """A case whose only fault is in the config file: a value written in it."""
    case(id, "config values", input, expect, **kwargs)(lambda c: [command, c.config(values, kind)])


# --- the config file itself

@case("config-missing", "config file", "config path that does not exist",
      ("Config file not found", "no-such.yaml"))
def _(c):
    return ["train", str(c.dir / "no-such.yaml")]


@case("config-bad-yaml", "config file", "YAML syntax error: a `[` on line 3 is never closed",
      ("config.yaml, line 4", "not valid YAML", "line 3"))
def _(c):
    return ["train", c.text("config.yaml", "model:\n  name: x\n  task: [causal-lm\ntrain:\n  max_steps: 3\n")]


@case("config-list", "config file", "a YAML list instead of sections", ("config.yaml", "expected sections"))
def _(c):
    return ["train", c.text("config.yaml", "- model\n- train\n")]


@case("config-typo-key", "config file", "typo `lerning_rate` in the file",
      ("config.yaml, line", "Unknown config key 'train.lerning_rate'", "Did you mean 'learning_rate'?"))
def _(c):
    return ["train", c.config({"train.lerning_rate": 1e-4})]


@case("config-typo-section", "config file", "section `trian:`", ("config.yaml, line", "'trian'", "Did you mean 'train'?"))
def _(c):
    path = Path(c.config())
    path.write_text(path.read_text() + "trian:\n  max_steps: 3\n")
    return ["train", str(path)]


@case("set-typo-key", "config file", "`--set train.lerning_rate=1e-4`",
      ("--set train.lerning_rate=1e-4", "Did you mean 'learning_rate'?"))
def _(c):
    return ["train", c.config(), "--set", "train.lerning_rate=1e-4"]


@case("set-no-equals", "config file", "`--set train.max_steps` without a value",
      ("'train.max_steps'", "section.key=value"))
def _(c):
    return ["train", c.config(), "--set", "train.max_steps"]


@case("set-no-section", "config file", "`--set max_steps=3` without a section", ("max_steps", "section.key", "train"))
def _(c):
    return ["train", c.config(), "--set", "max_steps=3"]


@case("set-out-of-range", "config file", "`--set train.max_steps=-1`",
      ("--set train.max_steps=-1", "train.max_steps", "-1", ">= 1"))
def _(c):
    return ["train", c.config(), "--set", "train.max_steps=-1"]


@case("extends-unknown-key", "config file", "unknown key `lora.rank` in the file a config extends",
      ("base.yaml, line", "lora.rank", "Did you mean 'r'?"))
def _(c):
    c.text("base.yaml", "lora:\n  rank: 8\n")
    path = Path(c.config())
    path.write_text("extends: base.yaml\n" + path.read_text())
    return ["train", str(path)]


@case("extends-missing", "config file", "`extends:` names a file that does not exist",
      ("config.yaml", "extends", "nope.yaml", "not found"))
def _(c):
    path = Path(c.config())
    path.write_text("extends: nope.yaml\n" + path.read_text())
    return ["train", str(path)]


@case("extends-loop", "config file", "two files that extend each other", ("loops back",))
def _(c):
    c.text("a.yaml", "extends: b.yaml\n")
    return ["train", c.text("b.yaml", "extends: a.yaml\n")]


# --- numeric ranges, types, booleans and choices

for _key, _value, _fragments in [
    ("train.max_steps", 0, (">= 1",)),
    ("train.max_steps", -1, (">= 1",)),
    ("train.learning_rate", -0.001, ("> 0",)),
    ("train.learning_rate", 0, ("> 0",)),
    ("train.learning_rate", 1e6, ("<= 1",)),
    ("lora.r", 0, (">= 1",)),
    ("lora.alpha", -16, ("> 0",)),
    ("lora.dropout", 1.5, ("< 1",)),
    ("lora.dropout", -0.1, (">= 0",)),
    ("train.per_device_batch_size", 0, (">= 1",)),
    ("train.gradient_accumulation_steps", 0, (">= 1",)),
    ("train.warmup_ratio", 1.5, ("< 1",)),
    ("train.weight_decay", -0.01, (">= 0",)),
    ("train.max_grad_norm", 0, ("> 0",)),
    ("train.logging_steps", 0, (">= 1",)),
    ("train.eval_steps", 0, (">= 1",)),
    ("train.save_steps", -5, (">= 1",)),
    ("train.save_total_limit", 0, (">= 1",)),
    ("train.eval_loss_examples", -1, (">= 0",)),
    ("train.pad_to_length", 0, (">= 1",)),
    ("train.seed", -1, (">= 0",)),
    ("data.max_length", 0, (">= 1",)),
    ("data.validation_fraction", -0.1, (">= 0",)),
    ("data.test_fraction", 1.2, ("< 1",)),
    ("data.seed", -3, (">= 0",)),
    ("data.max_train_examples", 0, (">= 1",)),
    ("eval.batch_size", 0, (">= 1",)),
    ("eval.max_new_tokens", 0, (">= 1",)),
    ("eval.max_examples", 0, (">= 1",)),
]:
    config_case(_slug(f"range-{_key.split('.')[1]}-{_value}"), f"`{_key}: {_value}`", {_key: _value},
                ("config.yaml, line", f"{_key}: {_value}", "is out of range", *_fragments))

for _key, _value, _fragments in [
    ("train.learning_rate", float("nan"), ("train.learning_rate", "nan", "a finite number")),
    ("lora.alpha", float("inf"), ("lora.alpha", "inf", "a finite number")),
    ("train.max_steps", 2.5, ("train.max_steps", "2.5", "whole number")),
    ("train.max_steps", "ten", ("train.max_steps", "'ten'", "whole number")),
    ("train.learning_rate", "fast", ("train.learning_rate", "'fast'", "a number")),
    ("train.max_steps", True, ("train.max_steps", "True", "whole number")),
    ("data.drop_leaked_rows", "yes", ("data.drop_leaked_rows", "expected true or false, got 'yes'")),
    ("train.group_by_length", 1, ("train.group_by_length", "expected true or false, got 1")),
    ("model.trust_remote_code", "no", ("model.trust_remote_code", "expected true or false, got 'no'")),
    ("train.gradient_checkpointing", "on", ("train.gradient_checkpointing", "'on'", "true or false")),
    ("model.quantization", "3bit", ("model.quantization", "'3bit'", "'4bit', '8bit' or null")),
    ("train.precision", "fp8", ("train.precision", "'fp8' is not one of", "'bf16'")),
    ("data.recipe", "alpaca", ("data.recipe", "'alpaca' is not one of", "'instruction'")),
    ("train.lr_scheduler", "cosine_restarts", ("train.lr_scheduler", "is not one of", "'cosine'")),
    ("lora.bias", "some", ("lora.bias", "'some' is not one of")),
    ("lora.target_modules", 5, ("lora.target_modules", "5")),
    ("data.labels", "World", ("data.labels", "expected a list", "'World'")),
    ("data.first_label_id", 2, ("data.first_label_id", "2 is not one of", "0, 1")),
    ("data.columns", ["input"], ("data.columns", "expected a mapping")),
]:
    config_case(_slug(f"type-{_key.split('.')[1]}-{_value}"), f"`{_key}: {_value!r}`", {_key: _value},
                ("config.yaml, line", *_fragments))


@case("type-model-section-string", "config values", "`model: smollm` (a value instead of a section)",
      ("config.yaml, line", "model", "expected a mapping", "'smollm'"))
def _(c):
    path = Path(c.config())
    path.write_text(re.sub(r"model:\n  name: .*\n", "model: smollm\n", path.read_text()))
    return ["train", str(path)]


config_case("fractions-sum-past-1", "`data.validation_fraction: 0.6` + `data.test_fraction: 0.5`",
            {"data.validation_fraction": 0.6, "data.test_fraction": 0.5},
            ("config.yaml, line", "data.validation_fraction (0.6) + data.test_fraction (0.5) must be < 1"))
config_case("classification-recipe-causal-task", "`data.recipe: classification` with `model.task: causal-lm`",
            {"data.recipe": "classification"}, ("model.task", "sequence-classification", "'causal-lm'"))
config_case("causal-recipe-classification-task", "`model.task: sequence-classification` with `data.recipe: instruction`",
            {"model.task": "sequence-classification"}, ("data.recipe", "classification", "'instruction'"))
config_case("fp16-on-cpu", "`train.precision: fp16` on a machine without a CUDA GPU", {"train.precision": "fp16"},
            ("train.precision", "fp16", "CUDA GPU", "bf16 or fp32"))
config_case("max-length-past-context", "`data.max_length: 100000`, past the model's context",
            {"data.max_length": 100000}, ("data.max_length", "100000", "1024 tokens", "model's context"), slow=True)
config_case("pad-to-length-short", "`train.pad_to_length: 8`, shorter than the examples", {"train.pad_to_length": 8},
            ("train.pad_to_length", "8", "shorter than the longest example", "null"), slow=True)
config_case("target-module-unknown", "`lora.target_modules: [q_proj, qkv]` on a Llama",
            {"lora.target_modules": ["q_proj", "qkv"]},
            ("['qkv']", "not found", "lora.target_modules", "q_proj", "'auto'"), slow=True)


# --- data files

@case("data-path-missing", "data files", "`data.path` names a file that does not exist",
      ("nothing-here.jsonl", "not a local file or folder"))
def _(c):
    return ["train", c.config({"data.path": str(c.dir / "data" / "nothing-here.jsonl")})]


@case("data-folder-missing", "data files", "`data.path` names a folder that does not exist",
      ("my-data", "not a local file or folder"))
def _(c):
    return ["train", c.config({"data.path": str(c.dir / "my-data") + "/"})]


@case("data-empty-file", "data files", "an empty (0-byte) train.jsonl", ("train.jsonl", "the file is empty"))
def _(c):
    c.text("data/train.jsonl", "")
    return ["train", c.data()]


@case("data-header-only", "data files", "a CSV with a header and no rows", ("train.csv", "holds no examples"))
def _(c):
    c.text("data/train.csv", "instruction,input,output\n")
    return ["train", c.data()]


@case("data-blank-lines", "data files", "a JSONL file of blank lines", ("train.jsonl", "holds no examples"))
def _(c):
    c.text("data/train.jsonl", "\n\n  \n")
    return ["train", c.data()]


@case("data-bad-json-line", "data files", "JSONL line 7 is not valid JSON",
      ("train.jsonl, line 7", "not valid JSON", "one JSON object"))
def _(c):
    lines = [json.dumps(r) for r in gen_rows()]
    lines[6] = lines[6][:-5]
    c.text("data/train.jsonl", "\n".join(lines) + "\n")
    return ["train", c.data()]


@case("data-json-line-not-object", "data files", "JSONL line 2 holds a list", ("train.jsonl, line 2", "JSON object"))
def _(c):
    lines = [json.dumps(r) for r in gen_rows()]
    lines[1] = '["a", "b"]'
    c.text("data/train.jsonl", "\n".join(lines) + "\n")
    return ["train", c.data()]


@case("data-json-bad", "data files", "a .json file with a syntax error on line 3", ("train.json, line 3", "not valid JSON"))
def _(c):
    c.text("data/train.json", '[\n{"instruction": "a", "output": "b"},\n{"instruction": "c" "output": "d"}\n]\n')
    return ["train", c.data()]


@case("data-json-not-rows", "data files", "a .json file holding an object with two lists",
      ("train.json", "exactly one list of rows"))
def _(c):
    c.text("data/train.json", json.dumps({"train": gen_rows(5), "test": gen_rows(5, 10)}))
    return ["train", c.data()]


@case("data-csv-field-count", "data files", "CSV line 5 has an extra field",
      ("train.csv, line 5", "4 fields, the header has 3", "Quote fields"))
def _(c):
    rows = [f'"{r["instruction"]}","{r["input"]}","{r["output"]}"' for r in gen_rows()]
    rows[3] += ",extra"
    c.text("data/train.csv", "instruction,input,output\n" + "\n".join(rows) + "\n")
    return ["train", c.data()]


@case("data-csv-unclosed-quote", "data files", "CSV line 4 opens a quote that is never closed",
      ("train.csv, line 4", "quote"))
def _(c):
    rows = [f'"{r["instruction"]}","{r["input"]}","{r["output"]}"' for r in gen_rows()]
    rows[2] = rows[2][:-1]
    c.text("data/train.csv", "instruction,input,output\n" + "\n".join(rows) + "\n")
    return ["train", c.data()]


@case("data-csv-stray-quote", "data files", "CSV line 6: text after a closing quote",
      ("train.csv, line 6", "quote"))
def _(c):
    rows = [f'"{r["instruction"]}","{r["input"]}","{r["output"]}"' for r in gen_rows()]
    rows[4] = '"What is "4" plus 4?","","4 plus 4 is 8."'
    c.text("data/train.csv", "instruction,input,output\n" + "\n".join(rows) + "\n")
    return ["train", c.data()]


@case("data-csv-duplicate-header", "data files", "CSV header names `output` twice",
      ("train.csv, line 1", "repeats a column name"))
def _(c):
    c.text("data/train.csv", "instruction,output,output\na,b,c\n")
    return ["train", c.data()]


@case("data-not-utf8", "data files", "a Latin-1 byte on line 9 of a JSONL file",
      ("train.jsonl, line 9", "0xe9", "not UTF-8", "iconv"))
def _(c):
    text = "".join(json.dumps(r) + "\n" for r in gen_rows()).encode()
    lines = text.split(b"\n")
    lines[8] = lines[8].replace(b"What", b"Wh\xe9t")
    c.text("data/train.jsonl", b"\n".join(lines))
    return ["train", c.data()]


@case("data-unsupported-suffix", "data files", "a .xml data file", ("train.xml", "unsupported file type '.xml'"))
def _(c):
    return ["train", c.config({"data.path": c.text("data/train.xml", "<rows/>\n")})]


@case("data-parquet-damaged", "data files", "a Parquet file cut short", ("train.parquet", "not a readable Parquet file"))
def _(c):
    path = Path(c.rows("data/train.parquet", gen_rows()))
    path.write_bytes(path.read_bytes()[:200])
    return ["train", c.config({"data.path": str(path)})]


@case("data-folder-no-split", "data files", "a folder whose files are not named after a split",
      ("no data file named after a split", "notes.md", "train/validation/test"))
def _(c):
    c.rows("data/a.jsonl", gen_rows())
    c.rows("data/b.jsonl", gen_rows(5, 50))
    c.text("data/notes.md", "hi")
    return ["train", c.data()]


@case("data-folder-two-train", "data files", "a folder with train.jsonl and train.csv",
      ("several files for one split", "train.csv", "train.jsonl"))
def _(c):
    c.rows("data/train.jsonl", gen_rows())
    c.rows("data/train.csv", gen_rows())
    return ["train", c.data()]


@case("data-mapping-missing-file", "data files", "`data.path: {train: ..., test: missing.jsonl}`",
      ("data.path.test", "missing.jsonl"))
def _(c):
    return ["train", c.config({"data.path": {"train": c.rows("d/train.jsonl", gen_rows()),
                                             "test": str(c.dir / "missing.jsonl")}})]


@case("data-mapping-unknown-split", "data files", "`data.path: {training: ..., holdout: ...}`",
      ("'holdout'", "train, validation and test"))
def _(c):
    return ["train", c.config({"data.path": {"training": c.rows("d/train.jsonl", gen_rows()),
                                             "holdout": c.rows("d/h.jsonl", gen_rows(3, 50))}})]


@case("data-no-train-split", "data files", "a folder with only test.jsonl", ("No train split", "train"))
def _(c):
    c.rows("data/test.jsonl", gen_rows())
    return ["train", c.data()]


@case("data-hub-offline", "data files", "`data.path: someone/dataset` (a Hub id, offline)",
      ("'someone/dataset'", "not a local file or folder", "Hub"), slow=True)
def _(c):
    return ["train", c.config({"data.path": "someone/dataset"})]


@case("data-conll-bad-line", "data files", "a CoNLL file whose line 4 has no tag",
      ("train.conll, line 4", "token and its BIO tag"))
def _(c):
    c.text("data/train.conll", "EU B-ORG\nrejects O\n\nGerman\ncall O\n")
    return ["train", c.data()]


@case("data-conll-classification", "data files", "a CoNLL file with `data.recipe: classification`",
      ("CoNLL/BIO token file", "data.recipe: instruction"))
def _(c):
    c.text("data/train.conll", "EU B-ORG\nrejects O\n\nGerman B-MISC\ncall O\n")
    return ["train", c.data(**{"data.recipe": "classification"})]


@case("data-csv-header-count", "data files", "`data.csv_header` with 2 names for a 3-column CSV",
      ("train.csv, line 1", "3 fields, the header has 2", "data.csv_header"))
def _(c):
    rows = [f'"{r["instruction"]}","{r["input"]}","{r["output"]}"' for r in gen_rows()]
    c.text("data/train.csv", "\n".join(rows) + "\n")
    return ["train", c.data(**{"data.csv_header": ["instruction", "output"]})]


# --- columns and values

@case("column-missing", "data values", "no `output` column", ("train.jsonl", "missing column 'output'",
                                                               "['instruction', 'input', 'answer']", "data.columns.output"))
def _(c):
    return ["train", c.data([{**{k: v for k, v in r.items() if k != "output"}, "answer": r["output"]}
                             for r in gen_rows()])]


@case("column-mapped-typo", "data values", "`data.columns.input: sentense` (typo)",
      ("missing column 'sentense'", "data.columns.input"))
def _(c):
    return ["train", c.data(gen_rows(), **{"data.columns": {"input": "sentense"}})]


@case("column-role-unknown", "data values", "`data.columns: {text: input}` with the instruction recipe",
      ("data.columns", "['text']", "'instruction'"))
def _(c):
    return ["train", c.data(gen_rows(), **{"data.columns": {"text": "input"}})]


@case("column-no-instruction", "data values", "no instruction column and no `data.instruction`",
      ("missing column 'instruction'", "data.instruction"))
def _(c):
    return ["train", c.data([{"input": r["instruction"], "output": r["output"]} for r in gen_rows()])]


@case("value-empty-answer", "data values", "an empty answer in line 12",
      ("train.jsonl, line 12, field 'output'", "non-empty text", "Fix or remove the row"))
def _(c):
    rows = gen_rows()
    rows[11]["output"] = "  "
    return ["train", c.data(rows)]


@case("value-empty-answer-csv", "data values", "an empty answer in CSV row 12 (line 13)",
      ("train.csv, line 13, field 'output'", "non-empty text"))
def _(c):
    rows = gen_rows()
    rows[11]["output"] = ""
    return ["train", c.data(rows, name="data/train.csv")]


@case("value-number-answer", "data values", "a number as the answer in line 5",
      ("train.jsonl, line 5, field 'output'", "expected text, got 42"))
def _(c):
    rows = gen_rows()
    rows[4]["output"] = 42
    return ["train", c.data(rows)]


@case("value-parquet-empty-answer", "data values", "an empty answer in Parquet row 12",
      ("train.parquet, row 12, field 'output'", "non-empty text"))
def _(c):
    rows = gen_rows()
    rows[11]["output"] = ""
    return ["train", c.data(rows, name="data/train.parquet")]


@case("value-chat-not-list", "data values", "chat line 3: `messages` is text",
      ("train.jsonl, line 3, field 'messages'", "non-empty list", '{"role": ..., "content": ...}'))
def _(c):
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in gen_rows()]
    rows[2]["messages"] = "hello"
    return ["train", c.data(rows, **{"data.recipe": "chat"})]


@case("value-chat-ends-with-user", "data values", "chat line 8 ends with a user turn",
      ("train.jsonl, line 8, field 'messages'", "last message is not a non-empty assistant turn"))
def _(c):
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in gen_rows()]
    rows[7]["messages"] = rows[7]["messages"][:1]
    return ["train", c.data(rows, **{"data.recipe": "chat"})]


@case("label-unknown-in-test", "data values", "test.jsonl line 2 has a label missing from `data.labels`",
      ("test.jsonl, line 2, field 'label'", "'Weather' is not in the label set", "data.labels"))
def _(c):
    c.rows("data/train.jsonl", cls_rows())
    c.rows("data/test.jsonl", [{"text": "a new story", "label": "World"}, {"text": "rain again", "label": "Weather"}])
    return ["train", c.data(**{"data.recipe": "classification"})]


@case("label-zero-one-based", "data values", "label 0 in line 4 of data whose ids start at 1",
      ("train.jsonl, line 4, field 'label'", "id 0 is outside 1..3", "data.first_label_id"))
def _(c):
    rows = [{"text": f"story {i}", "label": 1 + i % 3} for i in range(30)]
    rows[3]["label"] = 0
    return ["train", c.data(rows, **{"data.recipe": "classification", "data.first_label_id": 1})]


@case("label-id-past-end", "data values", "label id 3 with three labels counted from 0",
      ("train.jsonl, line 6, field 'label'", "id 3 is outside 0..2", "If your ids start at 1"))
def _(c):
    rows = [{"text": f"story {i}", "label": i % 3} for i in range(30)]
    rows[5]["label"] = 3
    return ["train", c.data(rows, **{"data.recipe": "classification"})]


@case("label-empty", "data values", "an empty label in line 9", ("train.jsonl, line 9, field 'label'", "expected a label"))
def _(c):
    rows = cls_rows()
    rows[8]["label"] = ""
    return ["train", c.data(rows, **{"data.recipe": "classification"})]


@case("leaked-rows", "data values", "2 test rows that also appear in train",
      ("2 example(s) of", "test.jsonl", "also appear in", "train.jsonl", "drop_leaked_rows"))
def _(c):
    c.rows("data/train.jsonl", gen_rows())
    c.rows("data/test.jsonl", gen_rows(3, 100) + gen_rows(2, 4))
    return ["train", c.data()]


@case("leaked-all-dropped", "data values", "every test row is in train, with `data.drop_leaked_rows: true`",
      ("Every row of", "test.jsonl", "nothing is left to evaluate"))
def _(c):
    c.rows("data/train.jsonl", gen_rows())
    c.rows("data/test.jsonl", gen_rows(3))
    return ["train", c.data(**{"data.drop_leaked_rows": True})]


# --- too little data

@case("small-one-row", "too little data", "a one-row file", ("validation split carved from", "1 distinct example",
                                                              "would be empty", "validation file"))
def _(c):
    return ["train", c.data(gen_rows(1))]


@case("small-identical-rows", "too little data", "fifty identical rows", ("1 distinct example", "would be empty"))
def _(c):
    return ["train", c.data(gen_rows(1) * 50)]


@case("small-four-rows", "too little data", "four distinct rows (`validation_fraction` 0.1 of 4 = 0.4 rows)",
      ("4 distinct example(s)", "would be empty", "bring at least 5 distinct examples"))
def _(c):
    return ["train", c.data(gen_rows(4))]



@case("small-classification", "too little data", "one row per label, stratified carving",
      ("validation split carved from", "3 distinct example(s)", "would be empty", "data.validation_fraction"))
def _(c):
    return ["train", c.data(cls_rows(1), **{"data.recipe": "classification"})]


@case("small-all-too-long", "too little data", "`data.max_length: 8` drops every training example",
      ("data.max_length", "8", "every", "train"), slow=True)
def _(c):
    return ["train", c.config({"data.max_length": 8})]


@case("small-no-test-rows", "too little data", "`evaluate` with `data.test_fraction: 0` and no test file",
      ("test", "no rows", "data.test_fraction"), slow=True)
def _(c):
    return ["evaluate", c.config({"data.test_fraction": 0.0})]


@case("small-eval-validation-empty", "too little data", "`eval.split: validation` with `data.validation_fraction: 0`",
      ("validation", "no rows", "data.validation_fraction"), slow=True)
def _(c):
    return ["evaluate", c.config({"data.validation_fraction": 0.0, "eval.split": "validation"})]


# --- models

@case("model-folder-not-a-model", "models", "`model.name` is a folder of data files",
      ("is a folder but holds no model", "train.jsonl", "save_pretrained"), slow=True)
def _(c):
    c.rows("notmodel/train.jsonl", gen_rows())
    return ["train", c.config({"model.name": str(c.dir / "notmodel")})]


@case("model-hub-offline", "models", "`model.name: someone/model` (neither local nor embedded; offline)",
      ("Could not load 'someone/model'", "not a local folder, not an embedded model", "smollm2-135m-instruct"), slow=True)
def _(c):
    return ["train", c.config({"model.name": "someone/model"})]


@case("model-path-missing", "models", "`model.name` is a path to a folder that does not exist",
      ("models/mine", "not a local folder", "smollm2-135m-instruct"), slow=True)
def _(c):
    return ["train", c.config({"model.name": str(c.dir / "models" / "mine")})]


@case("model-near-embedded-name", "models", "`model.name: smollm2-135m` (near an embedded name)",
      ("Could not load 'smollm2-135m'", "smollm2-135m-instruct"), slow=True)
def _(c):
    return ["train", c.config({"model.name": "smollm2-135m"})]


@case("model-file-not-folder", "models", "`model.name` is a file", ("model.name", "notes.txt", "folder"), slow=True)
def _(c):
    return ["train", c.config({"model.name": c.text("notes.txt", "hello\n")})]


@case("model-no-tokenizer", "models", "a model folder without tokenizer files",
      ("model-copy", "tokenizer", "save_pretrained"), slow=True)
def _(c):
    target = c.dir / "model-copy"
    shutil.copytree(c.assets.llama, target)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "chat_template.jinja"):
        (target / name).unlink(missing_ok=True)
    return ["train", c.config({"model.name": str(target)})]


@case("model-no-weights", "models", "a model folder without weights", ("model-copy", "model.safetensors"), slow=True)
def _(c):
    target = c.dir / "model-copy"
    shutil.copytree(c.assets.llama, target)
    (target / "model.safetensors").unlink()
    return ["train", c.config({"model.name": str(target)})]


@case("model-pickle-weights", "models", "a model folder with pytorch_model.bin only (pickle)",
      ("model-copy", "safetensors", "pytorch_model.bin"), slow=True)
def _(c):
    target = c.dir / "model-copy"
    shutil.copytree(c.assets.llama, target)
    (target / "model.safetensors").rename(target / "pytorch_model.bin")
    return ["train", c.config({"model.name": str(target)})]


@case("model-truncated-weights", "models", "model.safetensors cut short",
      ("model-copy", "model.safetensors", "damaged"), slow=True)
def _(c):
    target = c.dir / "model-copy"
    shutil.copytree(c.assets.llama, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return ["train", c.config({"model.name": str(target)})]


@case("model-is-adapter", "models", "`model.name` is a run's adapter folder",
      ("is a LoRA adapter, not a model", "base model", "--adapter"), slow=True)
def _(c):
    c.finished_run()
    return ["train", c.config({"model.name": str(c.run / "adapter"), "train.output_dir": str(c.dir / "run2")})]


@case("estimate-unknown-model", "models", "`estimate --model tinyllama`",
      ("Unknown model name 'tinyllama'", "preset"))
def _(c):
    return ["estimate", "--model", "tinyllama"]


@case("estimate-zero-batch", "models", "`estimate --batch-size 0`", ("--batch-size", "0", ">= 1"))
def _(c):
    return ["estimate", "--batch-size", "0"]


@case("estimate-negative-seq-len", "models", "`estimate --seq-len -512`", ("--seq-len", "-512", ">= 1"))
def _(c):
    return ["estimate", "--seq-len", "-512"]


# --- run folders

@case("run-finished-no-flag", "run folders", "`train` into a folder holding a finished run",
      ("already holds a run", "--resume", "--overwrite", "train.output_dir"))
def _(c):
    c.finished_run()
    return ["train", c.config()]


@case("run-interrupted-no-flag", "run folders", "`train` into a folder holding an interrupted run",
      ("already holds a run", "checkpoints", "--resume"))
def _(c):
    c.interrupted_run()
    return ["train", c.config()]


@case("run-shorter-into-finished", "run folders", "a shorter second run (`max_steps: 2`) into a finished run",
      ("already holds a run", "--overwrite"))
def _(c):
    c.finished_run()
    return ["train", c.config({"train.max_steps": 2})]


@case("overwrite-bad-data", "run folders", "`train --overwrite` of a finished run, with a bad data file",
      ("train.jsonl, line 3, field 'output'", "non-empty text"))
def _(c):
    c.finished_run()
    rows = gen_rows()
    rows[2]["output"] = ""
    return ["train", c.data(rows), "--overwrite"]


@case("resume-no-run", "run folders", "`--resume` where no run was started", ("--resume: no run in", "without --resume"))
def _(c):
    return ["train", c.config(), "--resume"]


@case("resume-no-checkpoint", "run folders", "`--resume` of a run that stopped before its first checkpoint",
      ("no complete checkpoint", "--overwrite"))
def _(c):
    c.interrupted_run(keep_checkpoints=())
    return ["train", c.config(), "--resume"]


@case("resume-finished", "run folders", "`--resume` of a finished run", ("is finished", "--overwrite"))
def _(c):
    c.finished_run()
    return ["train", c.config(), "--resume"]


@case("resume-changed-r", "run folders", "`--resume` with `lora.r` changed from 4 to 8",
      ("Cannot resume", "lora.r: 4 -> 8", "config.yaml"))
def _(c):
    c.interrupted_run()
    return ["train", c.config({"lora.r": 8}), "--resume"]


@case("resume-changed-model", "run folders", "`--resume` with another `model.name`",
      ("Cannot resume", "model.name", "other-llama"))
def _(c):
    c.interrupted_run()
    return ["train", c.config({"model.name": str(c.assets.other_llama)}), "--resume"]


@case("resume-past-max-steps", "run folders", "`--resume` with `max_steps: 2` of a run checkpointed at step 4",
      ("checkpoint-4", "train.max_steps", "2"), slow=True)
def _(c):
    c.interrupted_run()
    return ["train", c.config({"train.max_steps": 2}), "--resume"]


@case("resume-and-overwrite", "run folders", "`--resume --overwrite` together", ("contradict",))
def _(c):
    c.interrupted_run()
    return ["train", c.config(), "--resume", "--overwrite"]


@case("resume-damaged-config", "run folders", "`--resume` of a run whose config.yaml is not valid YAML",
      ("run/config.yaml", "not valid YAML"))
def _(c):
    c.interrupted_run()
    (c.run / "config.yaml").write_text("model: [\n")
    return ["train", c.config(), "--resume"]


@case("output-dir-is-file", "run folders", "`train.output_dir` is an existing file",
      ("run", "not a folder", "train.output_dir"))
def _(c):
    c.run.write_text("a file\n")
    return ["train", c.config()]


@case("failed-start-then-retry", "run folders", "`train` again after a first attempt failed on the data",
      ("train.jsonl, line 3", "non-empty text"))
def _(c):
    from tunebook import cli

    rows = gen_rows()
    rows[2]["output"] = ""
    config = c.data(rows)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli.main(["train", config])  # the first attempt; the case is the second one
    return ["train", config]


@case("run-folder-read-only", "run folders", "`train.output_dir` is a read-only folder",
      ("Cannot write the run folder <case>/run", "train.output_dir"), slow=True, volatile=(_NOT_WRITABLE,))
def _(c):
    c.run.mkdir()
    (c.run / "notes.txt").write_text("my notes\n")
    c.read_only.append(c.run)
    return ["train", c.config()]


@case("disk-full-while-saving", "run folders", "the disk fills while the run saves a checkpoint (writes fail)",
      ("Writing the run into <case>/run failed", "File too large", "Free disk space", "train again"), slow=True)
def _(c):
    c.patches.append(lambda: file_size_limit(600_000))  # the 2 MB tokenizer.json of a checkpoint fails
    return ["train", c.config()]


# --- training that goes wrong

@case("diverges-lr-1", "training", "`train.learning_rate: 1.0` (allowed, far too high)",
      ("Training collapsed", "gradient norm fell", "train.learning_rate=1 is too high", "adapter was not saved"),
      slow=True,
      volatile=(r"\d+\.\d+(?:e[-+]?\d+)?", r"(?<=step )\d+"))
def _(c):
    return ["train", c.config({"train.learning_rate": 1.0, "train.max_steps": 16, "train.save_steps": 100,
                               "train.eval_steps": 100})]


@case("nan-loss", "training", "a model whose loss is NaN at step 1",
      ("Loss became nan at step 1", "train.learning_rate", "adapter was not saved"), slow=True)
def _(c):
    return ["train", c.config({"model.name": str(c.assets.nan_llama)})]


# --- evaluation

@case("eval-label-order", "evaluate", "`evaluate` with `data.labels` in another order than trained",
      ("Cannot evaluate", "data.labels", "['World', 'Sports', 'Business'] -> ['Sports', 'World', 'Business']"))
def _(c):
    c.finished_run("cls")
    return ["evaluate", c.config({"data.labels": ["Sports", "World", "Business"]}, kind="cls")]


@case("eval-changed-r", "evaluate", "`evaluate` with `lora.r: 8` for an adapter trained with r=4",
      ("Cannot evaluate", "lora.r: 4 -> 8"))
def _(c):
    c.finished_run()
    return ["evaluate", c.config({"lora.r": 8})]


@case("eval-changed-instruction", "evaluate", "`evaluate` with another `data.instruction`",
      ("Cannot evaluate", "data.instruction: None -> 'Answer.'"))
def _(c):
    c.finished_run()
    return ["evaluate", c.config({"data.instruction": "Answer."})]


@case("eval-no-adapter-no-base", "evaluate", "`evaluate --no-base` with no adapter", ("Nothing to evaluate", "adapter"))
def _(c):
    return ["evaluate", c.config(), "--no-base"]


@case("eval-adapter-not-adapter", "evaluate", "`evaluate --adapter` of a folder without adapter_config.json",
      ("No adapter in", "adapter_config.json", "--adapter"))
def _(c):
    c.path("somewhere/file.txt").write_text("x")
    return ["evaluate", c.config(), "--adapter", str(c.dir / "somewhere")]


@case("eval-existing-results", "evaluate", "`evaluate` where results already exist",
      ("already holds evaluation results", "--overwrite", "--out"))
def _(c):
    c.finished_run()
    (c.run / "eval").mkdir()
    (c.run / "eval" / "results.json").write_text("{}\n")
    return ["evaluate", c.config()]


@case("eval-truncated-adapter", "evaluate", "adapter_model.safetensors cut short",
      ("adapter", "damaged", "Train again"), slow=True)
def _(c):
    c.finished_run()
    weights = c.run / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return ["evaluate", c.config()]


@case("eval-adapter-config-not-json", "evaluate", "adapter_config.json is not JSON",
      ("adapter", "damaged", "JSONDecodeError", "Train again"))
def _(c):
    c.finished_run()
    (c.run / "adapter" / "adapter_config.json").write_text('{"r": 4,')
    return ["evaluate", c.config()]


@case("eval-adapter-other-base", "evaluate", "`--adapter` trained on another base model (no config.yaml beside it)",
      ("another base model", "lora"), slow=True)
def _(c):
    from tunebook.config import LoraSettings
    from tunebook.lora import apply_lora
    from tunebook.models import load_model

    adapter = c.dir / "other-adapter"
    apply_lora(load_model(str(c.assets.other_llama)), LoraSettings(r=4, alpha=8), verbose=False).save_pretrained(adapter)
    return ["evaluate", c.config(), "--adapter", str(adapter)]


@case("eval-adapter-other-run", "evaluate", "`--adapter` of a run trained on another base model",
      ("Cannot evaluate", "model.name"))
def _(c):
    c.finished_run()
    return ["evaluate", c.config({"model.name": str(c.assets.other_llama)}), "--adapter", str(c.run / "adapter")]


@case("eval-read-only", "evaluate", "`evaluate` into a read-only run folder",
      ("<case>/run/eval", "--out"), slow=True, volatile=(_NOT_WRITABLE,))
def _(c):
    c.finished_run()
    c.read_only.append(c.run)
    return ["evaluate", c.config()]


# --- accepted on purpose (exit 0): the output says what was done

@case("ok-duplicates", "accepted with a warning", "3 duplicate rows in train.jsonl",
      ("3 duplicate example(s) in", "train.jsonl"), exit=0)
def _(c):
    rows = gen_rows()
    return ["prepare", c.data(rows + rows[:3])]


@case("ok-classification-truncated", "accepted with a warning", "classification texts longer than `data.max_length`",
      ("longer than 6 tokens and were truncated",), exit=0, slow=True)
def _(c):
    return ["prepare", c.config({"data.max_length": 6}, kind="cls")]


@case("ok-leaked-dropped", "accepted with a warning", "2 leaked test rows with `data.drop_leaked_rows: true`",
      ("dropped 2 of 5 rows of", "test.jsonl"), exit=0)
def _(c):
    c.rows("data/train.jsonl", gen_rows())
    c.rows("data/test.jsonl", gen_rows(3, 100) + gen_rows(2, 4))
    return ["prepare", c.data(**{"data.drop_leaked_rows": True})]


@case("ok-five-rows", "accepted with a warning", "five distinct rows: 1 validation, 1 test, 3 train rows",
      ('"train": 3', '"validation": 1', '"test": 1'), exit=0)
def _(c):
    return ["prepare", c.data(gen_rows(5))]


@case("ok-no-test-split", "accepted with a warning", "`train` with `data.test_fraction: 0` and no test file",
      ("'test': 0",), exit=0, slow=True)
def _(c):
    return ["train", c.config({"data.test_fraction": 0.0, "train.max_steps": 1})]


# ---------------------------------------------------------------- running a case

@dataclass
class Outcome:
    case: Case
    status: int | None
    message: str  # the error message (or the matching output lines of an accepted case), normalized
    verdict: str
    problems: list[str] = field(default_factory=list)


def _snapshot(root: Path) -> dict[str, tuple[float, str]]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files[str(path.relative_to(root))] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return files


def _normalize(text: str, ctx: Ctx) -> str:
    text = text.replace(str(ctx.dir), "<case>").replace(str(ctx.assets.root), "<assets>")
    return text.replace(str(Path.home()), "~").strip()


def _steady(text: str, case: Case) -> str:
    """The message as the table shows it: what varies between machines and runs becomes "…"."""
    for pattern in case.volatile:
        text = re.sub(pattern, "…", text)
    return text


def run_case(case: Case, assets: Assets, directory: Path) -> Outcome:
    """Build `case` in `directory`, run its command in-process, and judge what happened."""
    from tunebook import cli

    ctx = Ctx(assets, directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # `without_write_permission` runs as nobody, who must reach the files
    argv = case.build(ctx)
    existed = ctx.run.is_dir()
    before = _snapshot(directory)
    out, err = io.StringIO(), io.StringIO()
    status: int | None = None
    escaped: BaseException | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        for patch in ctx.patches:
            stack.enter_context(patch())
        try:
            if ctx.read_only:
                status = _run_read_only(argv, ctx.read_only, out, err)
            else:
                status = cli.main(argv)
        except SystemExit as exc:  # argparse: a usage error
            status = exc.code if isinstance(exc.code, int) else 2
        except Exception as exc:  # noqa: BLE001 - an escaped exception is what this harness looks for
            escaped = exc
    after = _snapshot(directory)
    problems = []
    changed = sorted(k for k in before if k.startswith("run/") and before[k] != after.get(k))
    added = sorted(k for k in after if k.startswith("run/") and k not in before)
    if escaped is not None:
        first = str(escaped).strip().splitlines()[0] if str(escaped).strip() else ""
        message = f"{type(escaped).__name__}: {first}"[:400]
        verdict = "crash"
        problems.append("traceback")
    elif case.exit == 0:
        output = _normalize(out.getvalue(), ctx)
        lines = [line for line in output.splitlines() if any(f in line for f in case.expect)]
        message = " / ".join(dict.fromkeys(lines))
        verdict = "good" if status == 0 and all(f in output for f in case.expect) else "unclear"
    else:
        text = err.getvalue()
        found = list(re.finditer(r"tunebook(?: [a-z]+)?: error: ", text))  # argparse: "tunebook estimate: error:"
        message = _normalize(text[found[-1].end():].split("\r")[0] if found else text[-400:], ctx)
        if status not in (0, 2):
            verdict = "crash"
        elif status == 0:
            verdict = "silently wrong"
            problems.append("exit 0")
            message = ""
        else:
            missing = [f for f in case.expect if f not in message]
            if "Traceback" in text:
                problems.append("traceback in stderr")
            if missing:
                problems.append(f"missing {missing}")
            verdict = "unclear" if problems else "good"
    if changed:
        verdict = "lost work"
        problems.append(f"changed or removed {changed[:4]}")
    elif case.exit != 0 and added and verdict != "crash":
        verdict = "silently wrong" if verdict == "good" else verdict
        problems.append(f"{'wrote into the existing' if existed else 'left behind in a new'} run folder: {added[:4]}")
    return Outcome(case, status, _steady(_normalize(message, ctx), case), verdict, problems)


def _run_read_only(argv: list[str], paths: list[Path], out: io.StringIO, err: io.StringIO) -> int:
    import subprocess

    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(0o555)
    import tunebook

    source = Path(tunebook.__file__).resolve().parent.parent  # the tunebook this process runs, in the subprocess too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(read_only_command(argv, paths), capture_output=True, text=True, env=env, timeout=600)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    out.write(done.stdout)
    err.write(done.stderr)
    if "Traceback (most recent call last)" in done.stderr:
        last = [line for line in done.stderr.strip().splitlines() if line.strip()][-1]
        raise RuntimeError(f"in a subprocess: {last}")
    return done.returncode


def count_verdicts(outcomes: list[Outcome]) -> dict[str, int]:
    return {v: sum(o.verdict == v for o in outcomes) for v in VERDICTS}


def _cell(text: str) -> str:
    return re.sub(r"\s*[\r\n]\s*", " ", text.replace("|", "\\|"))


def table_row(o: Outcome) -> str:
    verdict = o.verdict + (f" ({'; '.join(o.problems)})" if o.problems and o.verdict != "good" else "")
    return (f"| `{o.case.id}` | {_cell(o.case.input)} | {o.status if o.status is not None else '-'} | "
            f"{_cell(verdict)} | {_cell(o.message)} |")


def _summary(counts: dict[str, int]) -> str:
    return f"{sum(counts.values())} cases: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "."


def splice_table(table: str, outcomes: list[Outcome]) -> str:
    """`table` with the rows of `outcomes` replaced and the counts recomputed (a partial rerun)."""
    rows = {f"| `{o.case.id}` |": table_row(o) for o in outcomes}
    lines = [rows.get(line[:line.index("` |") + 3], line) if line.startswith("| `") else line
             for line in table.splitlines()]
    verdicts = [line.split(" | ")[3].split(" (")[0] for line in lines if line.startswith("| `")]
    counts = {v: verdicts.count(v) for v in VERDICTS}
    return "\n".join(_summary(counts) if re.match(r"\d+ cases: ", line) else line for line in lines) + "\n"


def render_table(outcomes: list[Outcome]) -> str:
    """docs/bad_inputs.md: every case, grouped, with the message the user gets."""
    counts = count_verdicts(outcomes)
    lines = [
        "# Bad inputs and what tunebook says",
        "",
        "Generated by `python tests/bad_inputs.py` from the cases in `tests/bad_inputs.py`; "
        "`tests/test_bad_inputs.py` runs every case through the command line and fails when this file differs.",
        "Each case builds one faulty config, data file, model folder or run folder and runs one command. "
        "A mistake stops the command with exit status 2 and the one message shown (printed as "
        "`tunebook: error: <message>`; `--debug` adds the traceback), before a model loads where the mistake is "
        "in the config or the data, and without touching an existing run folder. "
        "`<case>` is the case's folder, `<assets>` the folder of the tiny shared models, data and runs.",
        "",
        _summary(counts),
    ]
    group = None
    for o in outcomes:
        if o.case.group != group:
            group = o.case.group
            lines += ["", f"## {group[0].upper()}{group[1:]}", "",
                      "| case | input | exit | verdict | message |", "|---|---|---|---|---|"]
        lines.append(table_row(o))
    return "\n".join(lines) + "\n"


def run_all(root: Path, cases: list[Case] | None = None, progress: bool = False) -> list[Outcome]:
    assets = Assets(root / "assets")
    (root / "assets").mkdir(parents=True, exist_ok=True)
    outcomes = []
    for i, c in enumerate(cases or CASES):
        outcomes.append(run_case(c, assets, root / "cases" / f"{i:03d}-{c.id}"))
        if progress:
            print(f"{outcomes[-1].verdict:15s} {c.id}: {outcomes[-1].message[:150]}", file=sys.__stderr__, flush=True)
    return outcomes


def workspace() -> Path:
    """A fresh folder that user nobody can read (see `without_write_permission`)."""
    root = Path(tempfile.mkdtemp(prefix="tunebook-bad-inputs-"))
    root.chmod(0o755)
    return root


def main(argv: list[str]) -> int:
    """``python tests/bad_inputs.py [--check] [case-id ...]``: run the cases, write (or check) the table.

    With case ids, only their rows of the table are rewritten (a quick rerun after a fix).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    torch.set_num_threads(1)
    check = "--check" in argv
    ids = [a for a in argv if not a.startswith("--")]
    cases = [c for c in CASES if not ids or c.id in ids]
    root = workspace()
    try:
        outcomes = run_all(root, cases, progress=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(count_verdicts(outcomes)), file=sys.__stderr__)
    table = splice_table(TABLE_PATH.read_text(), outcomes) if ids else render_table(outcomes)
    if check:
        return 0 if TABLE_PATH.read_text() == table else 1
    TABLE_PATH.write_text(table)
    print(f"wrote {TABLE_PATH}", file=sys.__stderr__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
