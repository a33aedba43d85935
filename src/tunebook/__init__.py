"""tunebook: parameter-efficient fine-tuning (LoRA, QLoRA, 8-bit) you can read, run and measure.

One module per pipeline stage:

- `tunebook.environment`  hardware facts and device/precision decisions (with reasons)
- `tunebook.models`       load a model + tokenizer by local path, embedded name or Hub id
- `tunebook.quantization` 4-bit NF4 / 8-bit loading through bitsandbytes
- `tunebook.lora`         LoRA config creation and application
- `tunebook.readers`      read files in the layouts public datasets ship in (CSV, JSON, CoNLL, ...)
- `tunebook.ner`          BIO/CoNLL entity tags -> extraction examples with JSON answers
- `tunebook.data`         validate and split datasets
- `tunebook.formatting`   prompt templates, tokenization and completion-only labels
- `tunebook.prepare`      the data stage end to end (validated splits -> token ids + length stats)
- `tunebook.decisions`    the run's choices (optimizer, gradient checkpointing, ...) with reasons
- `tunebook.train`        Trainer-based training runs
- `tunebook.evaluation`   task metrics before and after training (`tunebook.metrics`: offline
                          `evaluate` modules loaded by path)
- `tunebook.inference`    greedy generation in length-sorted batches, adapters at inference,
                          merging, several adapters on one base
- `tunebook.export`       merged model -> GGUF file, verified against the merged model
                          (`gguf_convert`: the GGUF writer; `ollama`: the Modelfile;
                          `llamacpp`: the file run and scored in llama.cpp, optional)
- `tunebook.memory`       memory estimates before you rent a GPU
- `tunebook.plots`        loss curves, length histograms, confusion matrices (PNG)
- `tunebook.files`        atomic saves
- `tunebook.log`          the package logger (``[tunebook] ...`` lines, rank 0 only)
- `tunebook.errors`       the errors a user can fix (the CLI prints them without a traceback)
- `tunebook.notebook`     notebook setup helpers
- `tunebook.cli`          `python -m tunebook ...`

Importing tunebook changes no global state: no warning filters, no matplotlib backend.
"""

__version__ = "0.1.0"
