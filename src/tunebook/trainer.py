"""The `Trainer` that tunebook trains with: a loss check every step, token counts, class weights, callbacks.

Split from :mod:`tunebook.train` (which wires data, model and run folder together) so that what
runs inside the training loop reads on its own: `TunebookTrainer` stops on a NaN/inf loss and counts
the tokens each step trains on (the benchmark's tokens/s), `WeightedClassificationLoss` applies
``train.class_weights``, `DivergenceGuard` stops a run whose loss blew up or collapsed, `MemoryLog`
records memory at every logging step, and `ReadableLogLines` prints each log as one short line
under the progress bar (`ReadableLogPrinter` prints the same line when progress bars are off).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import psutil
import torch
from transformers import ProgressCallback, Trainer, TrainerCallback

from .errors import TunebookError


class TrainingDiverged(TunebookError, RuntimeError):
    """The loss became NaN/infinite or blew up; the adapter was not saved."""



def balanced_class_weights(labels: list[int], num_labels: int) -> torch.Tensor:
    """``rows / (classes x rows of the class)`` per class id (scikit-learn's "balanced"); 1 where absent.

    With weights w, the mean loss over a batch becomes sum(w[y] * loss) / sum(w[y]) (what
    `cross_entropy(weight=w)` computes): every class carries the same total weight over the data.
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_labels).double()
    weights = len(labels) / (len(counts) * counts)
    return torch.where(counts > 0, weights, torch.ones_like(weights)).float()


@dataclass
class WeightedClassificationLoss:
    """The Trainer's ``compute_loss_func``: cross-entropy of the classification logits with class weights."""

    weights: torch.Tensor

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"].float()
        return torch.nn.functional.cross_entropy(logits, labels, weight=self.weights.to(logits.device))


class TunebookTrainer(Trainer):
    """`Trainer` that checks the loss every step and counts the tokens it actually trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained_tokens = 0  # labels != -100 (what the loss sees)
        self.input_tokens = 0  # non-padding tokens the forward pass processes
        self.padded_tokens = 0  # every position the forward pass computes, padding included
        # Per micro-batch in this process: rows, padded width, trained tokens, time.perf_counter() at its end.
        self.batch_log: list[dict] = []
        self.micro_batches = 0  # in this process, this run (a resumed run counts from the resume)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.micro_batches += 1
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"Loss became {loss.item()} at step {self.state.global_step + 1}. Lower train.learning_rate, "
                "try train.precision: fp32, or check the data for empty answers. The adapter was not saved; "
                "checkpoints before this step are kept.")
        labels = inputs.get("labels")
        trained = 0
        if labels is not None and labels.dim() > 1:  # causal LM; classification labels are one per row
            trained = int((labels != -100).sum())
            self.trained_tokens += trained
        mask = inputs.get("attention_mask")
        self.input_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self.padded_tokens += inputs["input_ids"].numel()
        rows, width = inputs["input_ids"].shape[:2]
        self.batch_log.append({"rows": rows, "width": width, "trained_tokens": trained,
                               "end": time.perf_counter()})
        return loss


class MemoryLog(TrainerCallback):
    """Memory in use at every logging step: RSS on CPU, allocated tensors on CUDA (metrics.json's ``memory_log``).

    The peak alone cannot tell a load-time spike from memory that keeps growing during training;
    this series can (benchmarks/README.md reads it for a 1,000-step run).
    """

    def __init__(self, device: str):
        self.device = device
        self.log: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.device == "cuda":
            used = torch.cuda.memory_allocated() / 2**20
        else:
            used = psutil.Process().memory_info().rss / 2**20
        self.log.append({"step": state.global_step, "memory_mb": round(used, 1)})


def readable_log_line(state, logs: dict) -> str | None:
    """``step 20/160: loss 0.743, grad norm 0.777, lr 1.00e-03`` (or ``eval loss``) for one Trainer log.

    None for the end-of-training summary (train_runtime, ...), which tunebook reports itself.
    """
    shown = [f"{label} {logs[key]:{spec}}" for key, label, spec in
             (("loss", "loss", ".4g"), ("eval_loss", "eval loss", ".4g"), ("grad_norm", "grad norm", ".3g"),
              ("learning_rate", "lr", ".2e")) if isinstance(logs.get(key), (int, float))]
    return f"step {state.global_step}/{state.max_steps}: " + ", ".join(shown) if shown else None


class ReadableLogLines(ProgressCallback):
    """transformers' progress bar, with each log written under it as one short line.

    The stock callbacks write the log dict itself (``{'loss': '0.743', 'grad_norm': '0.777', ...}``,
    numbers as quoted strings). This one writes `readable_log_line`: the same figures, readable in
    a notebook or a log file; all of them stay in metrics.json.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = readable_log_line(state, logs or {})
        if line and state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(line)


class ReadableLogPrinter(TrainerCallback):
    """In place of transformers' `PrinterCallback` when progress bars are off: `readable_log_line`s."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = readable_log_line(state, logs or {})
        if line and state.is_world_process_zero:
            print(line)


class DivergenceGuard(TrainerCallback):
    """Stop a run whose logged loss blew up, before it saves an adapter that only looks trained.

    A NaN/inf loss stops at once (`TunebookTrainer.training_step`). A finite blow-up is a logged
    loss above both twice and one nat more than the first logged loss: a learning rate far too
    high drives the model to a flat distribution over the vocabulary (loss -> ln(vocab), ~10.8 for
    SmolLM2) with zero gradients, which no healthy fine-tuning run comes near. A model that starts
    near that flat distribution (a random one) cannot blow up; there the same fault shows as a
    collapse: for COLLAPSE_LOGS logs in a row the gradient norm stays under 1/20 of its first logged
    value while the loss has not fallen by a tenth. Healthy runs whose gradients shrink that much
    got there by lowering the loss.
    """

    COLLAPSE_LOGS = 3

    def __init__(self, learning_rate: float):
        self.learning_rate = learning_rate
        self.history: list[tuple[int, float]] = []
        self.grad_norms: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.history.append((state.global_step, loss))
        if logs.get("grad_norm") is not None:
            self.grad_norms.append(float(logs["grad_norm"]))
        first = self.history[0][1]
        shown = ", ".join(f"step {step}: {value:.3g}" for step, value in self.history[-6:])
        cause = (f"Likely cause: train.learning_rate={self.learning_rate:g} is too high (LoRA trains well at 1e-4 "
                 "to 2e-3). The adapter was not saved; lower the rate and train again.")
        if not math.isfinite(loss) or (len(self.history) > 1 and loss > 2 * first and loss > first + 1.0):
            raise TrainingDiverged(f"Training diverged at step {state.global_step}: the loss went from {first:.3g} "
                                   f"to {loss:.3g} ({shown}). {cause}")
        recent = self.grad_norms[-self.COLLAPSE_LOGS:]
        if (len(self.grad_norms) > self.COLLAPSE_LOGS and all(g < self.grad_norms[0] / 20 for g in recent)
                and all(value > 0.9 * first for _, value in self.history[-self.COLLAPSE_LOGS:])):
            raise TrainingDiverged(
                f"Training collapsed at step {state.global_step}: the gradient norm fell from "
                f"{self.grad_norms[0]:.3g} to {recent[-1]:.3g} while the loss stayed near its start ({shown}); the "
                f"model's outputs saturated and it stopped learning. {cause}")
