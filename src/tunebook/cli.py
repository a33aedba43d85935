"""Command line: the same pipeline as the notebooks, headless, from a YAML config.

    python -m tunebook env
    python -m tunebook prepare  configs/smollm2-135m-instruct/lora.yaml
    python -m tunebook train    configs/smollm2-135m-instruct/lora.yaml [--set train.max_steps=20] [--resume]
    python -m tunebook evaluate configs/smollm2-135m-instruct/lora.yaml [--adapter runs/smollm2-lora/adapter]
    python -m tunebook estimate --model 7b --method qlora-4bit --seq-len 2048
    python -m tunebook export   configs/smollm2-135m-instruct/lora.yaml --format gguf --quant q8_0 [--overwrite]
    python -m tunebook llama-cpp configs/smollm2-135m-instruct/lora.yaml --quant q8_0   (needs llama-cpp-python)
    python -m tunebook demo     (prepare -> train -> evaluate base vs tuned, on the embedded defaults)

Multi-GPU: ``accelerate launch -m tunebook train CONFIG`` runs this same entry point on every rank.

A mistake in the config, the data or the files (:class:`tunebook.errors.TunebookError`) ends with
one message and exit status 2; ``--debug`` shows the traceback as well.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
import warnings

from .config import RunConfig, load_config
from .errors import TunebookError

DEMO_CONFIG = "configs/smollm2-135m-instruct/lora.yaml"


def _config(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.set or [])


def cmd_env(args: argparse.Namespace) -> int:
    from .environment import environment_report, format_report

    print(format_report(environment_report()))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_dataset, preview_examples

    config = _config(args)
    result = prepare_dataset(config, args.out)
    print(preview_examples(result["prepared"]))
    print(json.dumps(result["stats"], indent=2))
    print(f"[tunebook] processed dataset and stats written to {result['out_dir']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import run_training

    config = _config(args)
    try:
        run_training(config, resume=args.resume, overwrite=args.overwrite)
    finally:
        _end_distributed()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import run_evaluation

    config = _config(args)
    run_evaluation(config, adapter_dir=args.adapter, compare_base=not args.no_base, out_dir=args.out,
                   overwrite=args.overwrite)
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from .memory import estimate_memory, shape_from_name

    shape = shape_from_name(args.model)
    value_bytes = 4 if args.precision == "fp32" else 2  # weights and activations, as tunebook.train stores them
    estimate = estimate_memory(shape, args.method, batch_size=args.batch_size, seq_len=args.seq_len,
                               gradient_checkpointing=args.gradient_checkpointing, lora_r=args.lora_r,
                               lora_dropout=args.lora_dropout, inference=args.inference, device=args.device,
                               weight_dtype_bytes=value_bytes, activation_dtype_bytes=value_bytes)
    what = "inference" if args.inference else "training"
    print(f"{args.model} ({shape.num_parameters / 1e9:.2f}B parameters), {what}, batch {args.batch_size} x "
          f"{args.seq_len} tokens, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
          f"{args.precision} on {args.device}")
    print(estimate.breakdown())
    if not args.inference:
        print(f"  beyond the loaded weights{' and CUDA overhead' if args.device == 'cuda' else ''}: "
              f"{estimate.beyond_loaded_weights / 2**30:.2f} GiB "
              "(train.gradient_checkpointing: auto weighs this against the free memory)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluation import run_evaluation
    from .prepare import prepare_dataset
    from .train import run_training

    config = load_config(args.config, args.set or [])
    prepare_dataset(config, None)
    result = run_training(config, overwrite=args.overwrite)
    run_evaluation(config, adapter_dir=str(result.adapter_dir), compare_base=True, overwrite=args.overwrite)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    export_run(_config(args), quant=args.quant, fmt=args.format, adapter_dir=args.adapter, out_dir=args.out,
               overwrite=args.overwrite, verify=not args.no_verify)
    return 0


def cmd_llama_cpp(args: argparse.Namespace) -> int:
    from .llamacpp import run_llama_cpp

    run_llama_cpp(_config(args), quant=args.quant, gguf_path=args.gguf, out_dir=args.out, n_threads=args.threads)
    return 0


def _end_distributed() -> None:
    # Without this, gloo/NCCL process groups can abort at interpreter exit (seen ~1 run in 4).
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: it must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunebook", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print versions, device and precision decisions").set_defaults(func=cmd_env)

    def with_config(name: str, help: str, func, config_required: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        if config_required:
            p.add_argument("config", help="YAML run config, e.g. configs/smollm2-135m-instruct/lora.yaml")
        else:
            p.add_argument("config", nargs="?", default=DEMO_CONFIG, help=f"YAML run config (default {DEMO_CONFIG})")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.max_steps=20 (repeatable)")
        p.set_defaults(func=func)
        return p

    p = with_config("prepare", "validate, split, tokenize; write the processed dataset and stats", cmd_prepare)
    p.add_argument("--out", help="output folder (default: <train.output_dir>/prepared)")
    overwrite_help = "replace the run folder's earlier results (says what it removes)"
    p = with_config("train", "train a LoRA adapter", cmd_train)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the run folder")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p = with_config("evaluate", "task metrics of the base and the tuned model on the test split", cmd_evaluate)
    p.add_argument("--adapter", help="adapter folder (default: <train.output_dir>/adapter if it exists)")
    p.add_argument("--no-base", action="store_true", help="skip evaluating the base model")
    p.add_argument("--out", help="output folder (default: <train.output_dir>/eval)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in the output folder")
    p = with_config("demo", "prepare -> train -> evaluate on the embedded defaults", cmd_demo, config_required=False)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p = with_config("export", "merge the adapter and write a GGUF file (llama.cpp, Ollama), then verify it", cmd_export)
    p.add_argument("--format", default="gguf", choices=["gguf"], help="file format (default gguf)")
    p.add_argument("--quant", default="f16", choices=["f16", "bf16", "q8_0"], help="weight type (default f16)")
    p.add_argument("--adapter", help="adapter folder (default: <train.output_dir>/adapter)")
    p.add_argument("--out", help="output folder (default: <train.output_dir>/export); files go to <out>/<quant>/")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export of the same quant")
    p.add_argument("--no-verify", action="store_true", help="skip reloading and scoring the file (minutes on CPU)")
    p = with_config("llama-cpp", "score an exported GGUF in llama.cpp (needs llama-cpp-python)", cmd_llama_cpp)
    p.add_argument("--quant", default="q8_0", choices=["f16", "bf16", "q8_0"], help="which export (default q8_0)")
    p.add_argument("--gguf", help="the .gguf file (default: the one in <train.output_dir>/export/<quant>/)")
    p.add_argument("--out", help="export folder given to `export --out` (default: <train.output_dir>/export)")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores; 1 is faster on a busy CPU)")

    p = sub.add_parser("estimate", help="estimate training or inference memory before a run")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="embedded name, Hub id, preset (1b/7b/13b/70b) or size like 3B")
    p.add_argument("--method", default="lora", choices=["full", "lora", "qlora-4bit", "lora-8bit"])
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.add_argument("--seq-len", type=_positive_int, default=512)
    p.add_argument("--lora-r", type=_positive_int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0,
                   help="LoRA dropout (above 0 keeps a copy of each adapted input)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="what `train` picks: bf16 on recent GPUs and CPUs with avx512_bf16/AMX, fp32 on other CPUs")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda adds 1 GiB for the CUDA context; on cpu compare with the resident set's growth")
    p.add_argument("--inference", action="store_true", help="estimate generation instead of training")
    p.set_defaults(func=cmd_estimate)
    return parser


# What the operating system says when a save fails, and what the user can do about it.
_OS_FIXES = {errno.ENOSPC: "free disk space or point train.output_dir at a larger disk",
             errno.EROFS: "the file system is read-only: set train.output_dir to a writable folder",
             errno.EACCES: "no permission: set train.output_dir to a folder you can write",
             errno.EDQUOT: "the disk quota is full: free space or write elsewhere"}


def quiet_third_party() -> None:
    """Hide library messages that tell a CLI user nothing (the CLI is an application: it may).

    bitsandbytes logs at import that optional CPU kernels (a Hub download) are absent and uses its
    built-in path; peft calls a transformers property renamed in v5 (a note for peft's maintainers).
    """
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _message(exc: BaseException) -> str | None:
    """The one-line message for an error the user can fix; None for anything else (a bug)."""
    if isinstance(exc, TunebookError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _OS_FIXES:
        return f"{exc.strerror}: {exc.filename or ''}. Fix: {_OS_FIXES[exc.errno]}."
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("tunebook: interrupted. `train --resume` continues from the last checkpoint.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into the user's mistakes and tunebook's bugs below
        message = _message(exc)
        if message is None:
            raise
        if args.debug:
            traceback.print_exception(exc)
        print(f"tunebook: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
