"""Evaluation: batched generation, perplexity, metrics wiring, error analysis, before/after table.

Tiny random Llama models (2 layers, hidden 64) with the real SmolLM2 tokenizer keep this fast; the
one test on the real 135M model is marked `integration`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny_llama
from datasets import Dataset
from transformers import LlamaForSequenceClassification

from tunebook.config import DataConfig, EvalConfig, apply_overrides, load_config
from tunebook.evaluation import (
    compare_table,
    detect_task,
    error_analysis,
    evaluate_classification,
    evaluate_generation,
    perplexity,
    run_evaluation,
    warn_if_answers_exceed_cap,
)
from tunebook.formatting import build_prompt, completion_collator, prompt_messages, tokenize_example
from tunebook.inference import batches_by_length, generate

EXTRACTION = DataConfig(recipe="instruction", instruction="Extract the named entities as JSON.")


def _ref(person=(), organization=(), location=(), date=()) -> str:
    return json.dumps({"person": list(person), "organization": list(organization),
                       "location": list(location), "date": list(date)})


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer):
    return smollm_tokenizer  # shared (session-scoped): never mutated here


def tiny_llama_for(tokenizer, seed: int = 0):
    return make_tiny_llama(len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return tiny_llama_for(tokenizer)


def _prompts(tokenizer, sentences: list[str]) -> list[str]:
    return [build_prompt(tokenizer, prompt_messages({"input": s}, EXTRACTION)) for s in sentences]


SENTENCES = ["Ada Lovelace visited Paris.", "Hi.",
             "The Bank of Lisbon and Kyoto University signed a deal in March 2021 in Lagos, Nigeria.",
             "Grace Hopper spoke in Boston on 3 May 1985."]


def test_batched_generation_equals_one_by_one(tokenizer, tiny_model):
    prompts = _prompts(tokenizer, SENTENCES)
    batched = generate(tiny_model, tokenizer, prompts, max_new_tokens=8, batch_size=3, autocast=False)
    single = [generate(tiny_model, tokenizer, [p], max_new_tokens=8, batch_size=1, autocast=False)[0]
              for p in prompts]
    assert batched == single
    assert all(isinstance(text, str) and text for text in batched)  # a random model never says EOS first
    assert tokenizer.padding_side == "right"  # generate pads by itself and leaves the tokenizer alone
    assert not tiny_model.get_output_embeddings()._forward_pre_hooks  # its contiguous-input hook is gone


def test_generation_stops_at_end_token_and_strips_it(tokenizer):
    model = tiny_llama_for(tokenizer)
    head = torch.nn.Linear(64, len(tokenizer), bias=True)  # a head that always says "end"
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = 1.0
    model.lm_head = head
    ids = [tokenizer("hello there")["input_ids"], tokenizer("a longer prompt with more tokens")["input_ids"]]
    cut: list[int] = []
    assert generate(model, tokenizer, ids, max_new_tokens=5, batch_size=2, autocast=False, cut_rows=cut) == ["", ""]
    assert cut == []  # both answers ended with the end token


def test_answers_cut_at_the_cap_are_counted_and_long_references_warned(tokenizer, tiny_model, caplog):
    data = Dataset.from_list([{"input": s, "output": _ref(person=["Ada"] * (i + 1))} for i, s in enumerate(SENTENCES)])
    result = evaluate_generation(tiny_model, tokenizer, data, EXTRACTION, EvalConfig(max_new_tokens=3, batch_size=2),
                                 autocast=False)
    # A random tiny model never says the end token within 3 tokens: every answer is cut.
    assert result["cut_at_max_new_tokens"] == len(SENTENCES)
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in result["references"]]
    cap = sorted(lengths)[1]  # exactly the references longer than this are reported
    with caplog.at_level("WARNING", logger="tunebook"):
        assert warn_if_answers_exceed_cap(tokenizer, result["references"], cap) == sum(n > cap for n in lengths) > 0
    assert f"Set eval.max_new_tokens: {max(lengths)}" in caplog.text
    assert warn_if_answers_exceed_cap(tokenizer, result["references"], max(lengths)) == 0


def test_perplexity_is_exp_of_token_weighted_loss(tokenizer, tiny_model):
    rows = [{"input": s, "output": _ref(person=["Ada"] * (i + 1))} for i, s in enumerate(SENTENCES[:3])]
    data = Dataset.from_list([tokenize_example(r, tokenizer, EXTRACTION) for r in rows])
    collator = completion_collator(tokenizer)
    ppl = perplexity(tiny_model, data, collator, batch_size=2, autocast=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for example in data:  # one by one, no padding: the model's own mean loss per example
            n = sum(label != -100 for label in example["labels"][1:])
            loss = tiny_model(input_ids=torch.tensor([example["input_ids"]]),
                              labels=torch.tensor([example["labels"]])).loss
            total, count = total + loss.item() * n, count + n
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-4)


def test_evaluate_generation_detects_task(tokenizer, tiny_model):
    evaluation = EvalConfig(max_new_tokens=4, batch_size=2)
    extraction = Dataset.from_list([{"input": s, "output": _ref(person=["Ada"])} for s in SENTENCES[:3]])
    result = evaluate_generation(tiny_model, tokenizer, extraction, EXTRACTION, evaluation, autocast=False)
    assert result["task"] == "extraction" and result["num_examples"] == 3
    assert len(result["predictions"]) == 3 and result["inputs"] == SENTENCES[:3]
    assert result["references"] == [_ref(person=["Ada"])] * 3
    # The scores are entity_f1's on exactly these predictions and references.
    from tunebook.metrics.entity_f1 import entity_scores

    expected = entity_scores(result["predictions"], result["references"])
    assert {k: result[k] for k in expected} == expected
    text = Dataset.from_list([{"instruction": "Say hi.", "output": "Hello!"}] * 2)
    result = evaluate_generation(tiny_model, tokenizer, text, DataConfig(), evaluation, autocast=False)
    assert result["task"] == "text" and result["references"] == ["Hello!", "Hello!"]
    from tunebook.metrics import load_metric

    expected = load_metric("text_overlap").compute(predictions=result["predictions"], references=result["references"])
    assert {k: result[k] for k in ("exact_match", "token_f1", "rouge_l")} == {k: expected[k] for k in (
        "exact_match", "token_f1", "rouge_l")}
    assert detect_task([_ref(), "not json"]) == "text"
    assert detect_task([_ref(), _ref(date=["2019"])]) == "extraction"


def test_length_batches_keep_every_row_once_and_a_token_budget_for_the_long_tail():
    lengths = [128, 20, 19, 21, 90, 20, 22, 18, 60, 20, 23, 17, 20, 55, 21, 20]
    full = batches_by_length(lengths, batch_size=4)
    assert [len(b) for b in full] == [4, 4, 4, 4]  # without the budget: full batches, longest first
    assert [lengths[i] for i in full[0]] == [128, 90, 60, 55]
    budgeted = batches_by_length(lengths, batch_size=4, token_budget=True)
    assert sorted(i for b in budgeted for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 for b in budgeted)
    assert all(lengths[b[0]] == max(lengths[i] for i in b) for b in budgeted)  # still longest first
    budget = 4 * 20  # a full batch of the median row (median_low of these lengths: 20)
    # A row over the budget goes alone; every other batch pads to at most the budget.
    assert [lengths[i] for i in budgeted[0]] == [128] and [lengths[i] for i in budgeted[1]] == [90]
    assert all(len(b) * lengths[b[0]] <= budget for b in budgeted if len(b) > 1)
    padded = lambda batches: sum(len(b) * lengths[b[0]] for b in batches)  # noqa: E731
    assert padded(budgeted) < padded(full)
    assert batches_by_length([], 4, token_budget=True) == []


def test_evaluate_classification_writes_confusion_matrix(tokenizer, tmp_path):
    config = tiny_llama_for(tokenizer).config
    config.num_labels = 3
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    data = Dataset.from_list([{"input_ids": tokenizer(t)["input_ids"], "label": i % 3}
                              for i, t in enumerate(["a b c", "hello", "news about sport today", "x y", "z"])])
    result = evaluate_classification(model, tokenizer, data, ["A", "B", "C"], batch_size=2,
                                     out_png=tmp_path / "cm.png", autocast=False)
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Padding must not change a row's prediction: compare with unpadded one-by-one logits.
    with torch.no_grad():
        single = [int(model(input_ids=torch.tensor([ids])).logits.argmax(-1)) for ids in data["input_ids"]]
    assert result["predictions"] == single
    # The scores are those of these predictions against the split's labels.
    references = [i % 3 for i in range(5)]
    assert result["references"] == references and result["labels"] == ["A", "B", "C"]
    assert result["num_examples"] == 5
    assert result["accuracy"] == sum(p == r for p, r in zip(single, references)) / 5
    matrix = [[sum(1 for p, r in zip(single, references) if (r, p) == (t, q)) for q in range(3)] for t in range(3)]
    assert result["confusion_matrix"] == matrix


def test_error_analysis_counts_and_examples():
    gold = _ref(person=["Ada Lovelace"], location=["Paris"])
    predictions = [
        gold,  # correct
        "not json at all",  # invalid_json
        _ref(person=["Lovelace"], location=["Paris"]),  # boundary
        _ref(person=["Ada Lovelace"], location=["Paris", "London"]),  # invented_entity
        _ref(person=["Ada Lovelace"], organization=["Paris"]),  # wrong_type
        _ref(person=["Ada Lovelace"]),  # missing_entity
        "{broken",  # invalid_json
        "nope", "nope again",  # invalid_json x2 more: only 3 examples are kept
    ]
    inputs = [f"sentence {i}" for i in range(len(predictions))]
    result = error_analysis(predictions, [gold] * len(predictions), inputs)
    assert result["counts"] == {"correct": 1, "invalid_json": 4, "missing_entity": 1, "wrong_type": 1,
                                "invented_entity": 1, "boundary": 1}
    assert result["per_example"][0] == [] and result["per_example"][2] == ["boundary"]
    assert [e["input"] for e in result["examples"]["invalid_json"]] == ["sentence 1", "sentence 6", "sentence 7"]
    assert result["examples"]["wrong_type"][0] == {"input": "sentence 4", "reference": gold,
                                                   "prediction": predictions[4]}


def test_compare_table_contents():
    base = {"f1": 0.25, "per_type": {"person": {"f1": 0.5}}, "perplexity": 12.0}
    tuned = {"f1": 0.75, "per_type": {"person": {"f1": 0.25}}, "perplexity": 3.5}
    lines = compare_table(base, tuned, ["f1", "per_type.person.f1", "perplexity", "missing"]).splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "delta"] and set(lines[1]) == {"-"}
    assert lines[2].split() == ["f1", "0.2500", "0.7500", "+0.5000"]
    assert lines[3].split() == ["per_type.person.f1", "0.5000", "0.2500", "-0.2500"]
    assert lines[4].split() == ["perplexity", "12.0000", "3.5000", "-8.5000"]
    assert lines[5].split() == ["missing", "-", "-", "-"]


@pytest.mark.integration
def test_run_evaluation_on_smollm2(tmp_path):
    from tunebook.lora import apply_lora
    from tunebook.models import load_model

    config = apply_overrides(load_config("configs/smollm2-135m-instruct/lora.yaml"), {
        "train.output_dir": str(tmp_path), "eval.max_examples": 4, "eval.max_new_tokens": 16})
    # An untrained adapter (B = 0) must leave every output unchanged: tuned == base.
    apply_lora(load_model(config.model.name), config.lora, verbose=False).save_pretrained(tmp_path / "adapter")
    results = run_evaluation(config)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["task"] == "extraction" and saved["num_examples"] == 4
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    from tunebook.metrics.entity_f1 import categorize_errors, entity_scores

    for name in ("base", "tuned"):
        # Every saved score is entity_f1's on the saved predictions (recomputed here from the file).
        expected = entity_scores([r[f"{name}_output"] for r in rows], [r["reference"] for r in rows])
        for key in ("precision", "recall", "f1", "valid_json_rate", "exact_match"):
            assert saved[name][key] == pytest.approx(expected[key])
        assert saved[name]["perplexity"] > 1 and saved[name]["perplexity_rows"] > 0
    assert [r["base_errors"] for r in rows] == [categorize_errors(r["base_output"], r["reference"]) for r in rows]
    assert len(rows) == 4 and {"input", "reference", "base_output", "tuned_output", "base_errors"} <= set(rows[0])
    assert [r["base_output"] for r in rows] == [r["tuned_output"] for r in rows]
    print({k: saved["base"][k] for k in ("precision", "recall", "f1", "valid_json_rate", "exact_match")})


# ---------------------------------------------------------------- what evaluation counts, row by row

@pytest.fixture(scope="module")
def eval_assets(tmp_path_factory):
    """A tiny BERT encoder (MiniLM tokenizer) and a tiny Llama (SmolLM2 tokenizer), saved like local models."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bad_inputs import Assets

    root = tmp_path_factory.mktemp("eval-assets")
    return Assets(root)


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evaluate(tmp_path, values: dict, *args: str) -> tuple[dict, list[dict]]:
    import yaml

    from tunebook import cli

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values, sort_keys=False))
    assert cli.main(["evaluate", str(config), *args]) == 0
    out = tmp_path / "run" / "eval"
    return json.loads((out / "results.json").read_text()), _read_jsonl(out / "predictions.jsonl")


def test_classification_predictions_follow_the_test_file(eval_assets, tmp_path):
    """Truncated and reordered test rows: every row is scored, predictions.jsonl keeps the file's order
    and line numbers, and each reported number says over how many rows it was computed."""
    from bad_inputs import cls_rows, write_jsonl

    labels = ["World", "Sports", "Business"]
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", cls_rows(8, labels))
    # Labels in no particular order, every third text far longer than data.max_length.
    test = [{"text": f"held out {label} item {i}" + " and more words" * (20 if i % 3 == 0 else 0), "label": label}
            for i, label in enumerate(["Business", "World", "World", "Sports", "Business", "Sports", "World"])]
    (data / "test.jsonl").write_text("\n" + "".join(json.dumps(r) + "\n\n" for r in test))  # lines 2, 4, 6, ...
    values = eval_assets.base_values("cls", tmp_path / "run")
    values["data"].update(path=str(data), max_length=12, labels=labels)
    results, rows = _evaluate(tmp_path, values)
    assert [r["row"] for r in rows] == [2 + 2 * i for i in range(len(test))]  # the lines of test.jsonl
    assert [r["input"] for r in rows] == [t["text"] for t in test]
    assert [r["reference"] for r in rows] == [t["label"] for t in test]
    assert results["num_examples"] == results["split_rows"] == results["base"]["num_examples"] == len(test)
    assert results["truncated_rows"] == 3 and results["max_length"] == 12
    correct = sum(r["base_output"] == r["reference"] for r in rows)
    assert results["base"]["accuracy"] == pytest.approx(correct / len(test))


def test_generation_predictions_follow_the_test_file(eval_assets, tmp_path):
    """eval.max_examples takes the first rows of the test file, in its order, and says so."""
    from bad_inputs import gen_rows, write_jsonl

    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", gen_rows(20))
    test = list(reversed(gen_rows(6, start=100)))
    write_jsonl(data / "test.jsonl", test)
    values = eval_assets.base_values("gen", tmp_path / "run")
    values["data"]["path"] = str(data)
    values["eval"].update(max_examples=4, max_new_tokens=3)
    results, rows = _evaluate(tmp_path, values)
    assert [r["row"] for r in rows] == [1, 2, 3, 4]
    assert [r["reference"] for r in rows] == [t["output"] for t in test[:4]]
    assert [r["input"] for r in rows] == [t["input"] or t["instruction"] for t in test[:4]]
    assert (results["num_examples"], results["split_rows"], results["base"]["num_examples"]) == (4, 6, 4)
    assert results["base"]["perplexity_rows"] == 2  # the validation rows carved from train.jsonl (10% of 20)


# ---------------------------------------------------------------- run_evaluation on a tiny model (fast)


def _tiny_eval_config(model_dir, data_path, run_dir, **values):
    from tunebook.config import RunConfig

    return apply_overrides(RunConfig(), {"model.name": str(model_dir), "data.path": str(data_path),
                                         "train.output_dir": str(run_dir), "train.precision": "fp32",
                                         "eval.max_examples": 3, "eval.max_new_tokens": 4, "eval.batch_size": 2,
                                         "lora.r": 4, **values})


def _save_untrained_adapter(config, task: str = "causal-lm", labels=None) -> None:
    """An adapter as training would leave it, but untrained (B = 0): tuned must equal base."""
    from tunebook.config import save_config
    from tunebook.lora import apply_lora
    from tunebook.models import load_model

    run = __import__("pathlib").Path(config.train.output_dir)
    model = load_model(config.model.name, task, label_names=labels)
    apply_lora(model, config.lora, task, verbose=False).save_pretrained(run / "adapter")
    save_config(config, run / "config.yaml")


def test_run_evaluation_writes_consistent_results(tiny_model_dir, tmp_data, tmp_path):
    from tunebook.errors import RunFolderError
    from tunebook.metrics.entity_f1 import categorize_errors, entity_scores

    rows = [{"input": f"Person {i} lives in City {i}.", "output": _ref(person=[f"Person {i}"], location=[f"City {i}"])}
            for i in range(20)]
    config = _tiny_eval_config(tiny_model_dir, tmp_data(rows), tmp_path / "run",
                               **{"data.instruction": "Extract the named entities as JSON."})
    _save_untrained_adapter(config)
    results = run_evaluation(config)
    out = tmp_path / "run" / "eval"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (results["model"], results["quantization"], results["split"], results["task"]) == (
        str(tiny_model_dir), None, "test", "extraction")
    assert results["adapter"] == str(tmp_path / "run" / "adapter")
    assert results["num_examples"] == results["split_rows"] == 2  # 10% of 20 rows; the cap (3) is above it
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    by_row = {r["row"]: r for r in rows_with_lines(rows)}
    assert len(lines) == 2
    for line in lines:
        assert line["input"] == by_row[line["row"]]["input"] and line["reference"] == by_row[line["row"]]["output"]
        assert line["tuned_output"] == line["base_output"]  # B = 0: the adapter changes nothing
        assert line["base_errors"] == categorize_errors(line["base_output"], line["reference"])
    for name in ("base", "tuned"):
        expected = entity_scores([line[f"{name}_output"] for line in lines], [line["reference"] for line in lines])
        assert {k: results[name][k] for k in expected} == expected
        assert results[name]["num_examples"] == 2 and results[name]["perplexity_rows"] == 2
        assert sum(results[name]["error_counts"].values()) >= 2 - results[name]["error_counts"]["correct"]
    assert results["tuned"]["perplexity"] == pytest.approx(results["base"]["perplexity"], rel=1e-5)
    assert "predictions" not in results["base"] and "references" not in results["base"]

    with pytest.raises(RunFolderError, match="already holds evaluation results"):
        run_evaluation(config)
    again = run_evaluation(config, compare_base=False, overwrite=True)
    assert "tuned" in again and "base" not in again
    with pytest.raises(RunFolderError, match="Cannot evaluate"):
        run_evaluation(apply_overrides(config, {"lora.r": 8}), overwrite=True)
    with pytest.raises(RunFolderError, match="No adapter in"):
        run_evaluation(config, adapter_dir=str(tmp_path), overwrite=True)
    with pytest.raises(RunFolderError, match="Nothing to evaluate"):
        run_evaluation(apply_overrides(config, {"train.output_dir": str(tmp_path / "none")}), compare_base=False)


def rows_with_lines(rows: list[dict]) -> list[dict]:
    return [{**row, "row": i + 1} for i, row in enumerate(rows)]  # JSONL: one row per line


def test_run_evaluation_of_a_classifier(tiny_model_dir, tmp_data, tmp_path):
    labels = ["World News", "Sports", "Sci/Tech"]
    rows = [{"text": f"{label} story number {i}", "label": label} for i in range(10) for label in labels]
    config = _tiny_eval_config(tiny_model_dir, tmp_data(rows), tmp_path / "run", **{
        "model.task": "sequence-classification", "data.recipe": "classification", "data.labels": labels,
        "eval.max_examples": None, "eval.split": "validation"})
    _save_untrained_adapter(config, "sequence-classification", labels)
    results = run_evaluation(config)
    out = tmp_path / "run" / "eval"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert results["task"] == "classification" and results["split"] == "validation"
    assert len(lines) == results["num_examples"] == results["split_rows"] == 3  # stratified: one per label
    for line in lines:
        assert line["reference"] == line["input"].split(" story")[0]
        assert line["base_output"] in labels and line["tuned_output"] in labels
    for name in ("base", "tuned"):
        assert (out / f"confusion_matrix_{name}.png").read_bytes()[:4] == b"\x89PNG"
        correct = sum(line[f"{name}_output"] == line["reference"] for line in lines)
        assert results[name]["accuracy"] == correct / 3 and results[name]["labels"] == labels


class _Bar:
    """Stands in for tqdm: records how each progress bar is labelled and how far it got."""

    made: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.n = kwargs, 0
        _Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.n += n


def test_progress_bars_count_rows(tokenizer, tiny_model, monkeypatch):
    import tunebook.evaluation as evaluation
    import tunebook.inference as inference

    monkeypatch.setattr(inference, "tqdm", _Bar)  # generate's bar
    monkeypatch.setattr(evaluation, "tqdm", _Bar)  # evaluate_classification's
    _Bar.made = []
    generate(tiny_model, tokenizer, _prompts(tokenizer, SENTENCES[:3]), max_new_tokens=2, batch_size=2, autocast=False,
             desc="generate (base)")
    config = tiny_llama_for(tokenizer).config
    config.num_labels = 2
    model = LlamaForSequenceClassification(config)
    data = Dataset.from_list([{"input_ids": tokenizer(t)["input_ids"], "label": 0} for t in ("a", "b c", "d")])
    evaluate_classification(model, tokenizer, data, ["x", "y"], batch_size=2, autocast=False, desc="classify (tuned)")
    assert [(b.kwargs, b.n) for b in _Bar.made] == [
        ({"total": 3, "desc": "generate (base)", "unit": "row"}, 3),
        ({"total": 3, "desc": "classify (tuned)", "unit": "row"}, 3)]


def test_compare_table_text_is_aligned():
    table = compare_table({"f1": 0.5, "n": 3, "per_type": {"person": {"f1": 0.25}}}, {"f1": 0.75, "n": 4},
                          ["f1", "n", "per_type.person.f1", "missing"])
    assert table.splitlines() == [
        "metric                base   tuned    delta",
        "-------------------------------------------",
        "f1                  0.5000  0.7500  +0.2500",
        "n                        3       4  +1.0000",  # integers as they are; the delta as a number
        "per_type.person.f1  0.2500       -        -",  # one side missing: no delta
        "missing                  -       -        -",
    ]


def test_run_evaluation_prints_the_before_after_table(tiny_model_dir, tmp_data, tmp_path, capsys):
    rows = [{"input": f"Person {i} lives in City {i}.", "output": _ref(person=[f"Person {i}"], location=[f"City {i}"])}
            for i in range(20)]
    config = _tiny_eval_config(tiny_model_dir, tmp_data(rows), tmp_path / "run",
                               **{"data.instruction": "Extract the named entities as JSON."})
    _save_untrained_adapter(config)
    results = run_evaluation(config)
    assert set(results["base"]["error_counts"]) == {"correct", "invalid_json", "missing_entity", "wrong_type",
                                                    "invented_entity", "boundary"}
    assert isinstance(results["base"]["error_examples"], dict) and "errors" not in results["base"]
    out = capsys.readouterr().out
    table = compare_table(results["base"], results["tuned"], ["f1", "precision", "recall", "valid_json_rate",
                                                              "exact_match", *[f"per_type.{t}.f1" for t in (
                                                                  "date", "location", "organization", "person")],
                                                              "perplexity"],
                          results["baselines"], results["best_baseline"])
    assert f"test, 2 rows:\n{table}" in out
    assert "classification head is untrained" not in out


def test_run_evaluation_of_a_classifier_says_its_head_is_new(tiny_model_dir, tmp_data, tmp_path, capsys):
    labels = ["a", "b"]
    rows = [{"text": f"{label} story {i}", "label": label} for i in range(10) for label in labels]
    config = _tiny_eval_config(tiny_model_dir, tmp_data(rows), tmp_path / "run", **{
        "model.task": "sequence-classification", "data.recipe": "classification", "data.labels": labels})
    results = run_evaluation(config)  # no adapter: the base only
    out = capsys.readouterr().out
    assert "base: the classification head is untrained (random), so base scores are near chance" in out
    table = compare_table(results["base"], {}, ["accuracy", "macro_f1"], results["baselines"],
                          results["best_baseline"])
    assert f"test, 2 rows:\n{table}" in out
    assert "no adapter at" in out and "base" in results and "tuned" not in results


def test_example_input_per_recipe():
    from tunebook.evaluation import example_input

    chat = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": "second"}, {"role": "assistant", "content": "b"}]}
    assert example_input(chat, DataConfig(recipe="chat")) == "second"
    assert example_input({"instruction": "Q", "input": "ctx"}, DataConfig()) == "ctx"
    assert example_input({"instruction": "Q", "input": ""}, DataConfig()) == "Q"
    assert example_input({"input": ""}, DataConfig(instruction="Fixed.")) == "Fixed."


def test_generate_passes_the_autocast_choice_on(tokenizer, tiny_model, monkeypatch):
    import tunebook.inference as inference

    seen, real = [], inference.autocast_for
    monkeypatch.setattr(inference, "autocast_for", lambda model, enabled: seen.append(enabled) or real(model, enabled))
    for choice in (False, None, True):
        generate(tiny_model, tokenizer, _prompts(tokenizer, SENTENCES[:1]), max_new_tokens=1, autocast=choice)
    assert seen == [False, None, True]


def test_misaligned_evaluation_rows_are_a_bug_report():
    from tunebook.evaluation import EvalSplit

    raw, tokenized = Dataset.from_list([{"row": 1}, {"row": 2}]), Dataset.from_list([{"row": 2}, {"row": 1}])
    with pytest.raises(RuntimeError) as info:
        EvalSplit(raw, tokenized, tokenized, None, "test", 2, train=raw)
    assert str(info.value) == "tunebook bug: tokenized and raw evaluation rows are not aligned."


def test_run_evaluation_loads_the_model_as_configured(tiny_model_dir, tmp_data, tmp_path, monkeypatch):
    """model.* reaches from_pretrained in evaluation as it does in training (trust_remote_code, dtype)."""
    from tunebook import models

    calls = []

    class Spy:
        def __init__(self, real):
            self.real = real

        def from_pretrained(self, source, **kwargs):
            calls.append((self.real.__name__, source, kwargs))
            return self.real.from_pretrained(source, **kwargs)

    for name in ("AutoModelForCausalLM", "AutoTokenizer"):
        monkeypatch.setattr(models, name, Spy(getattr(models, name)))
    rows = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(20)]
    config = _tiny_eval_config(tiny_model_dir, tmp_data(rows), tmp_path / "run", **{
        "model.trust_remote_code": True, "eval.max_examples": 1, "eval.max_new_tokens": 1})
    run_evaluation(config)
    assert [(name, source, kwargs["trust_remote_code"]) for name, source, kwargs in calls] == [
        ("AutoTokenizer", str(tiny_model_dir), True), ("AutoModelForCausalLM", str(tiny_model_dir), True)]
    assert calls[1][2]["dtype"] == torch.float32  # train.precision: fp32, as training stored the base
