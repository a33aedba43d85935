#!/usr/bin/env python3
"""Build data/self_instruct (Alpaca-layout train/validation/test.json) from the Self-Instruct repository.

    # both files are in https://github.com/yizhongw/self-instruct (commit 0b26cca)
    python scripts/make_self_instruct.py PATH/TO/self-instruct [--out data/self_instruct] [--seed 0]

Source: the human-written tasks of Self-Instruct (Wang, Kordi, Mishra, Liu, Smith, Khashabi,
Hajishirzi 2023), Apache-2.0: ``data/seed_tasks.jsonl`` (175 tasks the authors wrote to seed
their generator) and ``human_eval/user_oriented_instructions.jsonl`` (252 tasks written by experts
around real applications, for human evaluation). The model-generated 82K set of the same
repository is *not* used: this dataset is the human-written part only.

Each task is one JSON line with an ``instruction`` and a list of ``instances`` (an ``input``, maybe
empty, and the reference ``output``; every task here has exactly one). The files written here are
in Alpaca's layout, one JSON array of ``{"instruction", "input", "output"}`` objects per split
(plus the task ``id``), which tunebook's instruction recipe reads as it is.

The split follows the authors' wish: the user-oriented tasks are an evaluation set ("don't use it
for any training purpose"), so they are the test split, all 252, in published order. The 175
seed tasks are shuffled with ``random.Random(f"self-instruct-{seed}")``; 25 go to validation, the
rest to train. Standard library only; two runs give byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

# sha256 of the published files (github.com/yizhongw/self-instruct, commit 0b26cca).
SOURCES = {
    "data/seed_tasks.jsonl":
        "7779004fa198fdf27cf70a159363879d8a26c53329e11b436af17b3941875f48",
    "human_eval/user_oriented_instructions.jsonl":
        "81d60a117db495cecedecd9193504fd07c5b5a42f6699ef6b0f9da10fc22f42e",
}
VALIDATION_TASKS = 25


def read_tasks(path: Path) -> list[dict[str, str]]:
    """One row per task instance: ``{"id", "instruction", "input", "output"}``, in file order."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        task = json.loads(line)
        for number, instance in enumerate(task["instances"]):
            suffix = f"-{number}" if len(task["instances"]) > 1 else ""
            rows.append({"id": f"{task['id']}{suffix}", "instruction": task["instruction"],
                         "input": instance["input"], "output": instance["output"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkout of github.com/yizhongw/self-instruct")
    parser.add_argument("--out", type=Path, default=Path("data/self_instruct"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, expected in SOURCES.items():
        digest = hashlib.sha256((args.source / name).read_bytes()).hexdigest()
        if digest != expected:
            print(f"warning: {args.source / name} has sha256 {digest}, not the published file's "
                  f"{expected}; compare the counts below with data/self_instruct/README.md")
    seed_tasks = read_tasks(args.source / "data/seed_tasks.jsonl")
    random.Random(f"self-instruct-{args.seed}").shuffle(seed_tasks)
    splits = {
        "train": seed_tasks[VALIDATION_TASKS:],
        "validation": seed_tasks[:VALIDATION_TASKS],
        "test": read_tasks(args.source / "human_eval/user_oriented_instructions.jsonl"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        path = args.out / f"{split}.json"
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"{split:<11}{len(rows):>4} tasks  -> {path}")


if __name__ == "__main__":
    main()
