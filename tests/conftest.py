"""Shared fixtures: the real SmolLM2 tokenizer, tiny random models, and small data files.

Unit tests build tiny models from a config (random weights, seconds on a CPU, no download);
tests marked ``integration`` load the real embedded models from tunebook's cache.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable

# The test suite never needs the network. Offline mode makes an accidental Hub lookup fail at once
# instead of retrying DNS for ~50 s (huggingface_hub reads this variable when it is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` on machines without a CUDA GPU; under pytest-xdist, put the longest
    work units first (every worker sorts its collection the same way, as xdist requires)."""
    if _WORKERS > 1:
        items.sort(key=lambda item: _FIRST_UNITS.index(_work_unit(item.nodeid))
                   if _work_unit(item.nodeid) in _FIRST_UNITS else len(_FIRST_UNITS))
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# `make test` runs the suite in two processes (pytest-xdist, `-n 2`): unless OMP_NUM_THREADS is
# set, each worker's torch gets its share of the cores, as do subprocesses that do not set their own
# (they inherit OMP_NUM_THREADS; notebook kernels and some subprocesses run at one thread). Two
# workers on a 2-core CPU at one thread each beat one worker at two: most tests are small.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, _cores // _WORKERS))
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
_DEFAULT_THREADS = torch.get_num_threads()

# Work units for pytest-xdist: a test module runs on one worker (its module-scoped fixtures are built
# once), except the notebooks. Notebooks 02-05 share the smoke adapters under runs/smoke/ (04 and 05
# reuse 02's and 03's), so they run in order on one worker; 01's two runs write the same folders;
# every other notebook test is independent. The 02-05 chain is the longest unit (~15 min on a 2-core
# CPU), so it is handed out first, then the benchmark test; the other worker takes the rest
# meanwhile. (xdist queues a next unit on the chain's worker once two of its tests are left: a
# worker does not start its last queued test until it knows the next one, so holding that back
# made the chain's last notebook wait for the whole queue: 1,178 s for the suite instead of 912.)
_NOTEBOOK_CHAIN = ("02_", "03_", "04_", "05_")
_CHAIN_UNIT = "tests/test_notebooks.py::smoke 02-05"
_FIRST_UNITS = (_CHAIN_UNIT, "tests/test_benchmark.py", "tests/test_notebooks.py::01")


def _work_unit(nodeid: str) -> str:
    module, _, test = nodeid.partition("::")
    if not module.endswith("test_notebooks.py"):
        return module
    if test.startswith("test_notebook_runs_in_smoke_mode[") and test.split("[")[1].startswith(_NOTEBOOK_CHAIN):
        return _CHAIN_UNIT
    if "01_data_prep" in test or test.startswith("test_data_notebook"):
        return f"{module}::01"
    return nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `-n N` (xdist's default `--dist load`), schedule by :func:`_work_unit` in collection
    order (see pytest_collection_modifyitems); another `--dist` keeps xdist's own scheduler."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class CourseScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the order below, not largest-unit-first by test count
    return CourseScheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Unit tests run single-threaded; integration tests keep torch's default thread count.

    Tiny models gain nothing from intra-op threads, and on a busy shared CPU the OpenMP
    hand-offs make their small matmuls up to ~100x slower than one thread. A hook (not a
    fixture) so that module-scoped fixtures, set up inside a test's setup, get the same setting.
    """
    torch.set_num_threads(_DEFAULT_THREADS if "integration" in item.keywords else 1)


# Chat templates of five model families, as their tokenizer_config.json files ship them (no
# download: they are applied to the SmolLM2 vocabulary with each family's special tokens).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}")
# style -> (template, bos, eos, further special tokens, the tokenizer itself adds BOS, end of turn)
CHAT_STYLES = {
    "chatml": (None, None, None, [], False, "<|im_end|>"),  # SmolLM2's own tokenizer
    "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>",
               ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], True, "<|eot_id|>"),
    "gemma": (GEMMA_TEMPLATE, "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"], True, "<end_of_turn>"),
    "phi3": (PHI3_TEMPLATE, "<s>", "<|endoftext|>", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], False,
             "<|end|>"),
    "mistral": (MISTRAL_TEMPLATE, "<s>", "</s>", [], True, "</s>"),
    "plain-bos": (None, "<s>", "</s>", [], True, "</s>"),  # a base model: no chat template, adds BOS
}


def make_chat_tokenizer(base, style: str):
    """A copy of `base` (a fast tokenizer) dressed as `style`: its template and special tokens."""
    import copy

    from tokenizers.processors import TemplateProcessing

    template, bos, eos, extra, adds_bos, _ = CHAT_STYLES[style]
    tokenizer = copy.deepcopy(base)
    if style == "chatml":
        return tokenizer
    tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos, "pad_token": eos,
                                  "additional_special_tokens": extra})
    tokenizer.chat_template = template
    special = [(bos, tokenizer.convert_tokens_to_ids(bos))] if adds_bos else []
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A" if adds_bos else "$A", pair=f"{bos} $A $B" if adds_bos else "$A $B",
        special_tokens=special)
    return tokenizer


@pytest.fixture(scope="session", params=list(CHAT_STYLES))
def chat_tokenizer(request, smollm_tokenizer):
    """Each tokenizer style in turn (ChatML, Llama 3, Gemma, Phi-3, Mistral, a plain BOS-adding one)."""
    tokenizer = make_chat_tokenizer(smollm_tokenizer, request.param)
    tokenizer.style = request.param
    return tokenizer


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (pad token == eos token == <|im_end|>).

    Shared by many tests: never mutate it; copy it first (``copy.deepcopy``).
    """
    from tunebook.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def make_tiny_llama(vocab_size: int, seed: int = 0, pad_token_id: int | None = None,
                    bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A 2-layer Llama with hidden size 64 and random (seeded) weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama(smollm_tokenizer):
    """A fresh tiny `LlamaForCausalLM` whose vocabulary matches the SmolLM2 tokenizer."""
    tok = smollm_tokenizer
    return make_tiny_llama(len(tok), seed=0, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


@pytest.fixture
def tiny_bert():
    """A fresh tiny `BertForSequenceClassification` with 4 labels (random, seeded)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=4,
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write `rows` to `path` in the format its suffix names (.jsonl, .json, .csv, .tsv, .parquet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False))
    elif suffix in (".csv", ".tsv"):
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"write_rows: unsupported suffix {suffix!r}")
    return path


@pytest.fixture
def tmp_data(tmp_path: Path) -> Callable[..., Path]:
    """``tmp_data(rows, "train.jsonl", folder="ds")`` writes a small data file under tmp_path.

    The format follows the suffix (JSONL, JSON, CSV, Parquet); returns the file's path (its parent
    is the dataset folder when several split files are written to the same `folder`).
    """

    def write(rows: list[dict], name: str = "train.jsonl", folder: str = "data") -> Path:
        return write_rows(tmp_path / folder / name, rows)

    return write


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer) -> Path:
    """A tiny random Llama plus the SmolLM2 tokenizer, saved like any local model folder."""
    tok = smollm_tokenizer
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    make_tiny_llama(len(tok), seed=0, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_bert_classifier(path: Path, num_labels: int) -> Path:
    """A tiny random `BertForSequenceClassification` with the MiniLM tokenizer, saved to `path`."""
    from transformers import BertConfig, BertForSequenceClassification

    from tunebook.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A tiny random BERT encoder without a head plus the MiniLM tokenizer, saved like MiniLM-L6.

    Like the embedded encoder, it has no classification head: loading it for classification
    creates a new head for however many labels the data has.
    """
    from transformers import BertConfig, BertModel

    from tunebook.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    path = tmp_path_factory.mktemp("models") / "tiny-encoder"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
