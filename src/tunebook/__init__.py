"""tunebook: parameter-efficient fine-tuning (LoRA, QLoRA, 8-bit) you can read, run and measure.

One module per pipeline stage:

- `tunebook.environment`  hardware facts and device/precision decisions (with reasons)
- `tunebook.models`       load a model + tokenizer by local path, embedded name or Hub id
- `tunebook.quantization` 4-bit NF4 / 8-bit loading through bitsandbytes
- `tunebook.lora`         LoRA config creation and application
- `tunebook.data`         load, validate and split datasets
- `tunebook.formatting`   prompt templates, tokenization and completion-only labels
- `tunebook.prepare`      the data stage end to end (validated splits -> token ids + length stats)
- `tunebook.train`        Trainer-based training runs
- `tunebook.evaluation`   task metrics before and after training (`tunebook.metrics`: offline
                          `evaluate` modules loaded by path)
- `tunebook.inference`    adapters at inference, merging, several adapters on one base
- `tunebook.export`       merged model -> GGUF file, verified against the merged model
                          (`gguf_convert`: the GGUF writer; `ollama`: the Modelfile;
                          `llamacpp`: the file run and scored in llama.cpp, optional)
- `tunebook.memory`       memory estimates before you rent a GPU
- `tunebook.plots`        loss curves, length histograms, confusion matrices (PNG)
- `tunebook.files`        atomic saves
- `tunebook.notebook`     notebook setup and execution helpers
- `tunebook.cli`          `python -m tunebook ...`
"""

__version__ = "0.1.0"

import logging as _logging
import warnings as _warnings

# bitsandbytes logs at import that optional CPU kernels from the `kernels` package (a Hub
# download) are absent; its built-in CPU path is used instead, so the line is noise for users.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
# peft calls a transformers property renamed in v5; the warning is for peft's maintainers.
_warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
