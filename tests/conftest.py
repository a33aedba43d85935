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
    """Skip tests marked ``gpu`` on machines without a CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


_DEFAULT_THREADS = torch.get_num_threads()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Unit tests run single-threaded; integration tests keep torch's default thread count.

    Tiny models gain nothing from intra-op threads, and on a busy shared CPU the OpenMP
    hand-offs make their small matmuls up to ~100x slower than one thread. A hook (not a
    fixture) so that module-scoped fixtures, set up inside a test's setup, get the same setting.
    """
    torch.set_num_threads(_DEFAULT_THREADS if "integration" in item.keywords else 1)


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
    """Write `rows` to `path` in the format its suffix names (.jsonl, .json, .csv, .parquet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False))
    elif suffix == ".csv":
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
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
