"""Mean pooling for sentence-transformers checkpoints: chosen from the checkpoint, padding-proof, kept on save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunebook.lora import AdapterError, apply_lora, load_adapter
from tunebook.models import load_model, load_tokenizer
from tunebook.pooling import MeanPooler

TEXTS = ["free prize", "see you at lunch, and bring the long list of things we talked about"]


def _tiny_bert_dir(path: Path, mean_pooling: bool | None) -> Path:
    """A tiny random BERT saved with the MiniLM tokenizer; `mean_pooling` writes a sentence-transformers
    ``1_Pooling/config.json`` asking for it (None: no such file)."""
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    if mean_pooling is not None:
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": not mean_pooling,
             "pooling_mode_mean_tokens": mean_pooling}))
    return path


def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


@pytest.mark.parametrize("mean_pooling", [True, False, None])
def test_pooling_follows_the_checkpoint(tmp_path, mean_pooling) -> None:
    model = load_model(str(_tiny_bert_dir(tmp_path / "bert", mean_pooling)), "sequence-classification",
                       label_names=["ham", "spam"]).eval()
    assert isinstance(model.bert.pooler, MeanPooler) is bool(mean_pooling)
    assert getattr(model.config, "classifier_pooling", None) == ("mean" if mean_pooling else None)


def test_mean_pooling_ignores_padding_and_reads_every_token(tmp_path) -> None:
    path = _tiny_bert_dir(tmp_path / "bert", True)
    model = load_model(str(path), "sequence-classification", label_names=["ham", "spam"]).eval()
    tokenizer = load_tokenizer(str(path))
    batched = _logits(model, tokenizer, TEXTS)  # the short text is padded to the long one
    single = torch.cat([_logits(model, tokenizer, [t]) for t in TEXTS])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert model.bert.pooler.attention_mask is None  # not kept alive after the forward pass
    # The pooled vector is the mean of the token vectors: the head's input, by hand.
    inputs = tokenizer(TEXTS[1:], return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**inputs).last_hidden_state
        expected = model.classifier(hidden.mean(dim=1))
    torch.testing.assert_close(_logits(model, tokenizer, TEXTS[1:]), expected)


def test_a_saved_mean_pooled_model_loads_mean_pooled(tmp_path) -> None:
    """A merged model is saved without the sentence-transformers files: its config carries the choice."""
    path = _tiny_bert_dir(tmp_path / "bert", True)
    model = load_model(str(path), "sequence-classification", label_names=["ham", "spam"]).eval()
    model.save_pretrained(tmp_path / "saved")
    load_tokenizer(str(path)).save_pretrained(tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"), "sequence-classification", label_names=["ham", "spam"]).eval()
    assert isinstance(again.bert.pooler, MeanPooler)
    tokenizer = load_tokenizer(str(path))
    torch.testing.assert_close(_logits(again, tokenizer, TEXTS), _logits(model, tokenizer, TEXTS))


def test_an_adapter_trained_on_the_cls_pooler_is_refused(tmp_path) -> None:
    cls_model = load_model(str(_tiny_bert_dir(tmp_path / "cls", None)), "sequence-classification",
                           label_names=["ham", "spam"])
    apply_lora(cls_model, task="sequence-classification", verbose=False).save_pretrained(tmp_path / "adapter")
    mean_model = load_model(str(_tiny_bert_dir(tmp_path / "mean", True)), "sequence-classification",
                            label_names=["ham", "spam"])
    with pytest.raises(AdapterError, match="trained on the \\[CLS\\] pooler"):
        load_adapter(mean_model, str(tmp_path / "adapter"))
    # An adapter trained on the mean-pooled model itself loads.
    apply_lora(mean_model, task="sequence-classification", verbose=False).save_pretrained(tmp_path / "mean-adapter")
    fresh = load_model(str(tmp_path / "mean"), "sequence-classification", label_names=["ham", "spam"])
    assert load_adapter(fresh, str(tmp_path / "mean-adapter")) is not None
