"""Run configs: every shipped YAML loads; typos and wrong types fail with a useful message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunebook.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# configs/accelerate/ holds accelerate's own launcher format, not tunebook run configs.
CONFIG_FILES = sorted(
    p for p in (REPO_ROOT / "configs").glob("**/*.yaml")
    if "accelerate" not in p.relative_to(REPO_ROOT / "configs").parts
)


def test_there_are_configs_to_check() -> None:
    assert CONFIG_FILES, "no YAML run configs found under configs/"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT / "configs")))
def test_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    raw = yaml.safe_load(path.read_text())
    # Every value written in the file made it into the config (nothing ignored or renamed); a
    # variant's own values win over the file it extends.
    resolved = config_to_dict(config)
    base = raw.pop("extends", None)
    for section, values in raw.items():
        for key, value in (values or {}).items():
            assert resolved[section][key] == value, f"{path}: {section}.{key}"
    if base is not None:
        parent = config_to_dict(load_config(path.parent / base))
        inherited = [(s, k) for s in parent for k in parent[s] if k not in (raw.get(s) or {})]
        assert all(resolved[s][k] == parent[s][k] for s, k in inherited), f"{path}: extends {base}"
    assert config.data.recipe in ("instruction", "chat", "classification")
    # A shipped data path must exist relative to the repository root (where commands run).
    if isinstance(config.data.path, str) and config.data.path.startswith("data/"):
        assert (REPO_ROOT / config.data.path).exists(), f"{path}: data.path {config.data.path} missing"


def test_defaults_without_file_content() -> None:
    config = config_from_dict({})
    assert config == RunConfig()
    assert config.train.learning_rate == 2e-4
    assert config.model.quantization is None


def test_missing_config_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-such.yaml"):
        load_config(tmp_path / "no-such.yaml")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    config = apply_overrides(RunConfig(), {"train.max_steps": 7, "lora.target_modules": ["q_proj"],
                                           "data.columns": {"input": "sentence"}, "model.quantization": "4bit"})
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


# ---------------------------------------------------------------- unknown keys

def test_unknown_key_suggests_nearest() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"lerning_rate": 1e-4}})
    message = str(info.value)
    assert "train.lerning_rate" in message
    assert "Did you mean 'learning_rate'?" in message


def test_unknown_section_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"'trian'.*Did you mean 'train'\?"):
        config_from_dict({"trian": {"max_steps": 3}})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("lora:\n  rank: 8\n")
    with pytest.raises(ConfigError, match=r"lora\.rank.*Valid keys in lora: r, alpha"):
        load_config(path)


def test_unknown_section_in_override_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'train'\?"):
        load_config(REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml", ["trian.max_steps=1"])


def test_unknown_key_in_override_suggests_nearest() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'learning_rate'\?"):
        apply_overrides(RunConfig(), ["train.lerning_rate=0.001"])


@pytest.mark.parametrize("item", ["train.max_steps", "max_steps=3", "train.lora.r=3"])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError):
        apply_overrides(RunConfig(), [item])


# ---------------------------------------------------------------- types

@pytest.mark.parametrize(
    "values, key, shown",
    [
        ({"train": {"max_steps": "ten"}}, "train.max_steps", "'ten'"),
        ({"train": {"max_steps": 2.5}}, "train.max_steps", "2.5"),
        ({"train": {"max_steps": True}}, "train.max_steps", "True"),  # bool is not an int here
        ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "'fast'"),
        ({"train": {"gradient_checkpointing": "yes"}}, "train.gradient_checkpointing", "'yes'"),
        ({"data": {"labels": "World"}}, "data.labels", "'World'"),
        ({"data": {"labels": ["World", 3]}}, "data.labels[1]", "3"),
        ({"data": {"columns": ["input"]}}, "data.columns", "['input']"),
        ({"data": {"max_length": "long"}}, "data.max_length", "'long'"),
        ({"lora": {"target_modules": 5}}, "lora.target_modules", "5"),
        ({"model": "smollm"}, "model", "'smollm'"),
    ],
)
def test_wrong_type_names_key_and_value(values: dict, key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    message = str(info.value)
    assert key in message
    assert shown in message


def test_int_accepted_for_float() -> None:
    config = config_from_dict({"train": {"learning_rate": 1, "weight_decay": 0}})
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert isinstance(config.train.weight_decay, float)


@pytest.mark.parametrize(
    "section, key, value",
    [("model", "quantization", "3bit"), ("model", "task", "seq2seq"), ("train", "precision", "fp8"),
     ("data", "recipe", "alpaca"), ("lora", "bias", "some")],
)
def test_literal_choices_rejected(section: str, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({section: {key: value}})
    assert f"{section}.{key}" in str(info.value)
    assert repr(value) in str(info.value)


def test_literal_error_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"'fp8' is not one of 'auto', 'bf16', 'fp16', 'fp32'"):
        config_from_dict({"train": {"precision": "fp8"}})


# ---------------------------------------------------------------- overrides

def test_set_style_overrides_parse_values() -> None:
    config = apply_overrides(RunConfig(), [
        "train.max_steps=20",
        "train.learning_rate=0.0003",
        "model.quantization=4bit",
        "train.eval_loss_examples=null",
        "lora.target_modules=[q_proj, v_proj]",
        "data.labels=[World, Sports]",
        "train.gradient_checkpointing=true",
        "data.instruction=Answer briefly = well",  # only the first "=" splits
    ])
    assert config.train.max_steps == 20 and isinstance(config.train.max_steps, int)
    assert config.train.learning_rate == pytest.approx(3e-4)
    assert config.model.quantization == "4bit"
    assert config.train.eval_loss_examples is None
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.data.labels == ["World", "Sports"]
    assert config.train.gradient_checkpointing is True
    assert config.data.instruction == "Answer briefly = well"


def test_set_overrides_on_file_are_checked(tmp_path: Path) -> None:
    path = REPO_ROOT / "configs/smollm2-135m-instruct/lora.yaml"
    config = load_config(path, ["train.max_steps=3", "lora.r=4", "model.quantization=null"])
    assert (config.train.max_steps, config.lora.r, config.model.quantization) == (3, 4, None)
    # Untouched keys keep the file's values.
    assert config.data.columns == {"input": "sentence", "output": "output"}
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(path, ["train.max_steps=many"])


def test_set_override_float_in_exponent_notation() -> None:
    config = apply_overrides(RunConfig(), ["train.learning_rate=1e-4"])
    assert config.train.learning_rate == pytest.approx(1e-4)


def test_yaml_file_float_in_exponent_notation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 5e-5\n")
    assert load_config(path).train.learning_rate == pytest.approx(5e-5)


def test_apply_overrides_with_dict() -> None:
    base = RunConfig()
    config = apply_overrides(base, {"train.max_steps": 20, "train.learning_rate": 1e-4,
                                    "data.max_train_examples": None, "lora.target_modules": ["q_proj"]})
    assert config.train.max_steps == 20
    assert config.train.learning_rate == 1e-4
    assert config.data.max_train_examples is None
    assert config.lora.target_modules == ["q_proj"]
    # A copy: the original is unchanged.
    assert base.train.max_steps == 150 and base.lora.target_modules == "auto"


def test_apply_overrides_dict_is_type_checked() -> None:
    with pytest.raises(ConfigError, match=r"train\.max_steps.*'20'"):
        apply_overrides(RunConfig(), {"train.max_steps": "20"})
    with pytest.raises(ConfigError, match=r"'3bit'"):
        apply_overrides(RunConfig(), {"model.quantization": "3bit"})


# ---------------------------------------------------------------- ranges, booleans, extends, places

@pytest.mark.parametrize("key, value, allowed", [
    ("lora.r", 0, ">= 1"), ("lora.alpha", -16, "> 0"), ("lora.dropout", 1.5, ">= 0 and < 1"),
    ("train.max_steps", 0, ">= 1"), ("train.max_steps", -1, ">= 1"), ("train.learning_rate", -1e-4, "> 0 and <= 1"),
    ("train.learning_rate", 1e6, "> 0 and <= 1"), ("train.per_device_batch_size", 0, ">= 1"),
    ("data.validation_fraction", -0.1, ">= 0 and < 1"), ("data.max_length", 0, ">= 1"),
    ("eval.max_new_tokens", 0, ">= 1"),
])
def test_numbers_out_of_range_name_key_value_and_range(key: str, value, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), {key: value})
    assert str(info.value) == f"{key}: {value!r} is out of range: it must be {allowed}."


def test_fractions_must_leave_rows_to_train_on() -> None:
    with pytest.raises(ConfigError, match=r"validation_fraction \(0.6\) \+ data.test_fraction \(0.5\) must be < 1"):
        apply_overrides(RunConfig(), {"data.validation_fraction": 0.6, "data.test_fraction": 0.5})


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "1"])
def test_booleans_are_true_or_false_only(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  group_by_length: {text}\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line 2: train.group_by_length: expected true or false, got "):
        load_config(path)


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# a comment\nmodel:\n  name: tiny\n\nlora:\n  r: 8\n  alpha: -1\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 7: lora.alpha: -1 is out of range"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^--set lora.r=0: lora.r: 0 is out of range"):
        load_config(path, ["lora.r=0", "lora.alpha=2"])


def test_extends_merges_sections_and_reports_the_right_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("lora:\n  r: 8\n  alpha: 16\ntrain:\n  max_steps: 5\n  lerning_rate: 1\n")
    (tmp_path / "variant.yaml").write_text("extends: base.yaml\nlora:\n  r: 4\n")
    with pytest.raises(ConfigError, match=r"base.yaml, line 6: Unknown config key 'train.lerning_rate'"):
        load_config(tmp_path / "variant.yaml")
    (tmp_path / "base.yaml").write_text("lora:\n  r: 8\n  alpha: 16\ntrain:\n  max_steps: 5\n")
    config = load_config(tmp_path / "variant.yaml")
    assert (config.lora.r, config.lora.alpha, config.train.max_steps) == (4, 16.0, 5)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 5\n   lr: [1\n")
    with pytest.raises(ConfigError, match=r"c.yaml, line \d+: not valid YAML"):
        load_config(path)


def test_recipe_and_task_must_agree() -> None:
    with pytest.raises(ConfigError, match="set model.task: sequence-classification"):
        apply_overrides(RunConfig(), {"data.recipe": "classification"})


def test_suggestion_cutoff_and_no_suggestion() -> None:
    """Close enough (difflib ratio >= 0.5) gets a suggestion; nothing close gets none, and no filler."""
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"warm": 0.1}})
    assert "Unknown config key 'train.warm'. Did you mean 'warmup_ratio'? Valid keys in train:" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"zzz": 1}})
    assert str(info.value).startswith("Unknown config key 'train.zzz'. Valid keys in train: output_dir, max_steps,")


def test_ranges_come_from_the_field_metadata() -> None:
    import dataclasses

    from tunebook.config import DataConfig, TrainConfig

    bounds = {f.name: f.metadata.get("range") for f in dataclasses.fields(TrainConfig)}
    assert bounds["learning_rate"] == (None, 0, 1, None) and bounds["warmup_ratio"] == (0, None, None, 1)
    assert bounds["output_dir"] is None and TrainConfig().max_steps == 150 and DataConfig().max_length is None
    for key, value, allowed in [("train.learning_rate", 0.0, "> 0 and <= 1"),
                                ("train.warmup_ratio", 1.0, ">= 0 and < 1"),
                                ("train.max_steps", 0, ">= 1"), ("data.max_length", 0, ">= 1")]:
        with pytest.raises(ConfigError, match=f"{key}: {value!r} is out of range: it must be {allowed}."):
            apply_overrides(RunConfig(), {key: value})


def test_error_lines_count_from_the_file_start(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("# comment\nmodel:\n  name: x\ntrain:\n  max_steps: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}, line 5: train.max_steps: 0 is out of range: it must be >= 1."


def test_saved_config_keeps_the_field_order(tmp_path: Path) -> None:
    save_config(RunConfig(), tmp_path / "c.yaml")
    lines = (tmp_path / "c.yaml").read_text().splitlines()
    sections = [line for line in lines if not line.startswith(" ")]
    assert sections == ["model:", "data:", "lora:", "train:", "eval:"]
    assert [line.split(":")[0].strip() for line in lines[1:5]] == ["name", "task", "quantization", "trust_remote_code"]


def test_override_key_shape_errors_in_full() -> None:
    sections = "model, data, lora, train, eval"
    for item, hint in [("train.lora.r=3", ""), ("trian.max_steps=1", " Did you mean 'train'?"), ("zzz.r=1", "")]:
        with pytest.raises(ConfigError) as info:
            apply_overrides(RunConfig(), [item])
        key = item.split("=")[0]
        assert str(info.value) == f"Override key '{key}' must be section.key with section one of {sections}.{hint}"
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), ["train.max_steps"])
    assert str(info.value) == ("Override 'train.max_steps' must look like section.key=value, e.g. "
                               "train.max_steps=20.")


def test_override_into_an_empty_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\nlora:\n  r: 4\n")  # train: is null in YAML
    config = load_config(path, ["train.max_steps=7", "eval.batch_size=3"])
    assert (config.train.max_steps, config.eval.batch_size, config.lora.r) == (7, 3, 4)


@pytest.mark.parametrize("values, message", [
    ({"train": {"max_steps": "x"}}, "train.max_steps: expected a whole number, got 'x'."),
    ({"model": {"name": 5}}, "model.name: expected text, got 5."),
    ({"train": {"learning_rate": "x"}}, "train.learning_rate: expected a number, got 'x'."),
    ({"data": {"max_length": "x"}}, "data.max_length: 'x' does not fit a whole number or null."),
    ({"model": {"task": "x"}}, "model.task: 'x' is not one of 'causal-lm', 'sequence-classification'."),
    ({"model": {"quantization": "x"}}, "model.quantization: 'x' does not fit one of '4bit', '8bit' or null."),
    ({"data": {"path": 5}}, "data.path: 5 does not fit text or dict[str, str]."),
    ({"train": {"gradient_checkpointing": "x"}},
     "train.gradient_checkpointing: 'x' does not fit true or false or one of 'auto'."),
    ({"data": {"validation_fraction": 0.5, "test_fraction": 0.5}},
     "data.test_fraction: data.validation_fraction (0.5) + data.test_fraction (0.5) must be < 1, so that rows are "
     "left to train on."),
    ({"data": {"recipe": "classification"}},
     "model.task: recipe 'classification' trains a classification head: set model.task: sequence-classification "
     "(got 'causal-lm')."),
    ({"model": {"task": "sequence-classification"}},
     "data.recipe: model.task sequence-classification needs data.recipe: classification (got 'instruction')."),
    ({"train": {"class_weights": "balanced"}},
     "train.class_weights: class weights apply to data.recipe: classification (got 'instruction'); set "
     "train.class_weights: null."),
    ({"train": {"class_weights": "inverse"}}, "train.class_weights: 'inverse' does not fit one of 'balanced' or null."),
])
def test_config_errors_in_full(values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(values)
    assert str(info.value) == message


def test_rule_across_keys_points_at_the_line_of_its_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  validation_fraction: 0.5\n  test_fraction: 0.5\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 3: data.test_fraction: data.validation_fraction"):
        load_config(path)
