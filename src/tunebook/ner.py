"""Named-entity data in BIO/CoNLL format -> extraction examples with a JSON answer.

Real NER corpora (CoNLL-2003, WikiGold, WNUT-17, ...) ship one token per line with a tag such as
``B-PER``, ``I-ORG`` or ``O``. The extraction recipe needs a sentence and the answer the model
should write::

    EU rejects German call to boycott British lamb .
    {"person": [], "organization": ["EU"], "location": [], "misc": ["German", "British"]}

One key per entity type found in the tags, in the same order in every answer (CoNLL's PER, ORG,
LOC, MISC become person, organization, location, misc; other tag sets keep their names,
lower-cased), each listing the entity texts in the order they occur, without repeats.

Tags may be IOB2 (every entity starts with B-), IOB1 (CoNLL-2003's original files: I- starts an
entity, B- only separates two adjacent entities of one type) or BIOES/BILOU; all read the same.
"""

from __future__ import annotations

import json
import re

# CoNLL-2003's types, spelled as the shipped extraction data spells them.
TYPE_NAMES = {"PER": "person", "ORG": "organization", "LOC": "location", "MISC": "misc"}
_KNOWN_ORDER = ["person", "organization", "location", "misc"]
# No space before these tokens, none after the opening ones (Penn Treebank-style tokens).
_NO_SPACE_BEFORE = re.compile(r"^([.,;:!?%)\]}]+|'s|'S|n't|'re|'ve|'ll|'d|'m)$")
_NO_SPACE_AFTER = {"(", "[", "{", "$", "``"}


def type_name(tag_type: str) -> str:
    """Answer key for a tag's type: PER -> person ..., anything else lower-cased."""
    return TYPE_NAMES.get(tag_type.upper(), tag_type.lower())


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` token spans (end exclusive) of the entities a tag sequence marks."""
    spans: list[tuple[str, int, int]] = []
    current: tuple[str, int] | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.replace("_", "-", 1).partition("-")
        # A new entity starts at B/S/U, or at I/E/L whose type differs from the open entity (IOB1).
        starts = prefix in ("B", "S", "U") or (prefix in ("I", "E", "L") and (current is None or current[0] != kind))
        if current is not None and (prefix == "O" or starts):
            spans.append((current[0], current[1], i))
            current = None
        if prefix != "O" and starts:
            current = (kind, i)
        if prefix in ("E", "L", "S", "U") and current is not None:  # the span closes on this token
            spans.append((current[0], current[1], i + 1))
            current = None
    return spans


def detokenize(tokens: list[str]) -> str:
    """Join tokens into readable text: no space before punctuation and clitics, none after '('."""
    text = ""
    for i, token in enumerate(tokens):
        glue = i == 0 or _NO_SPACE_BEFORE.match(token) or tokens[i - 1] in _NO_SPACE_AFTER
        text += token if glue else " " + token
    return text


def entity_types(sentences: list[dict]) -> list[str]:
    """Answer keys for every type in the tags: CoNLL's four in their usual order, then the rest sorted."""
    found = {type_name(kind) for s in sentences for kind, _, _ in entity_spans(s["tags"])}
    return [t for t in _KNOWN_ORDER if t in found] + sorted(found - set(_KNOWN_ORDER))


def to_extraction(sentence: dict, keys: list[str]) -> dict[str, str]:
    """One ``{"tokens", "tags"}`` sentence -> ``{"input": text, "output": JSON answer}``."""
    answer: dict[str, list[str]] = {key: [] for key in keys}
    for kind, start, end in entity_spans(sentence["tags"]):
        text = detokenize(sentence["tokens"][start:end])
        if text not in answer[type_name(kind)]:
            answer[type_name(kind)].append(text)
    return {"input": detokenize(sentence["tokens"]), "output": json.dumps(answer, ensure_ascii=False)}
