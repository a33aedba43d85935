"""What the course teaches holds on tiny models: the plain peft + transformers calls of notebook 02
train exactly like `run_training`, and a LoRA layer written from scratch computes what peft's does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_rows
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

from tunebook.config import RunConfig, apply_overrides
from tunebook.models import load_tokenizer
from tunebook.prepare import prepare_tokenized
from tunebook.train import run_training


class LoRALinear(torch.nn.Module):
    """The from-scratch layer of notebook 02: h = W0·x + (alpha/r)·B·A·x."""

    def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = torch.nn.Parameter(torch.empty(r, base.in_features))
        torch.nn.init.kaiming_uniform_(self.A, a=5 ** 0.5)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T @ self.B.T)


def test_from_scratch_lora_layer_equals_peft(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], lora_dropout=0.0))
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    ours = LoRALinear(layer.base_layer, r=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(ours(torch.ones(1, 64)), layer.base_layer(torch.ones(1, 64)))  # B = 0: the base model
        layer.lora_B["default"].weight.normal_()
        ours.A.copy_(layer.lora_A["default"].weight)
        ours.B.copy_(layer.lora_B["default"].weight)
        x = torch.randn(3, 7, 64)
        assert torch.allclose(ours(x), layer(x), atol=1e-5)
        assert not torch.allclose(ours(x), layer.base_layer(x), atol=1e-3)  # the update is really there


def test_plain_trainer_and_run_training_give_the_same_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = [{"instruction": f"What is {i} plus {i}?", "input": "", "output": f"It is {2 * i}."} for i in range(40)]
    data = write_rows(tmp_path / "data" / "train.jsonl", rows)
    config = apply_overrides(RunConfig(), {
        "model.name": str(tiny_model_dir), "data.path": str(data), "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
        "train.output_dir": str(tmp_path / "tunebook"), "train.max_steps": 4, "train.per_device_batch_size": 4,
        "train.learning_rate": 1e-3, "train.precision": "fp32", "train.logging_steps": 1, "train.seed": 42})
    tokenizer = load_tokenizer(str(tiny_model_dir))
    train = prepare_tokenized(config, tokenizer).tokenized["train"]
    set_seed(42)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=[
                               "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    args = TrainingArguments(output_dir=str(tmp_path / "plain"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.05, optim="adamw_torch",
                             use_cpu=True, train_sampling_strategy="group_by_length", seed=42, data_seed=42,
                             logging_steps=1, save_strategy="no", report_to="none")
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100))
    trainer.train()
    plain = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    ours = [e["loss"] for e in run_training(config).metrics["train_loss"]]
    assert len(plain) == len(ours) == 4
    assert ours == pytest.approx(plain, abs=1e-5)
    assert plain[0] != pytest.approx(plain[-1], abs=1e-3)  # it trained: the comparison is not of constants
