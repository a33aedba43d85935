"""Mutation score per module from a `mutmut run` (its results in mutants/), for `make mutate`.

    python scripts/mutation_score.py [--mutants DIR] [--survivors] [--equivalent tests/README.md] [--sample 0.25]
    python scripts/mutation_score.py --print-sample 0.25   # names to pass to `mutmut run`

A full run is hours on two cores; ``--sample F`` scores a fixed fraction F of the mutants, chosen by a
hash of each mutant's name (the same names in every run of the same code), so a before/after
comparison can run on the same sample in a fraction of the time.

Score = killed / (killed + survived + no tests), counting timeouts as killed (the mutant made a
test hang or loop) and leaving out mutants not yet checked. Mutants listed as equivalent in
tests/README.md (lines of the form ``- `tunebook.mod.x_func__mutmut_N`, `...`: reason``) are taken out of the
denominator: no test can kill a change that does not change behaviour.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, 37}  # test failure, pytest internal error, timeouts, type check
SURVIVED = {0}
NO_TESTS = {5, 33}
NOT_CHECKED = {None}
_EQUIVALENT_LINE = re.compile(r"^\s*[-*] `[\w.ǁ]+__mutmut_\d+`")
_MUTANT = re.compile(r"`([\w.ǁ]+__mutmut_\d+)`")


def results(mutants: Path) -> dict[str, int | None]:
    """Mutant name -> exit code, from every ``*.py.meta`` file mutmut wrote."""
    out: dict[str, int | None] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def in_sample(name: str, fraction: float) -> bool:
    """A fixed pseudo-random choice of a fraction of the mutants: the hash of the name decides."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) < fraction * 16**8


def equivalent_mutants(readme: Path | None) -> set[str]:
    if readme is None or not readme.is_file():
        return set()
    lines = [line.split(":")[0] if "`:" in line else line for line in readme.read_text().splitlines()
             if _EQUIVALENT_LINE.match(line)]
    return {name for line in lines for name in _MUTANT.findall(line)}


def module_of(name: str) -> str:
    return re.split(r"\.x_|\.xǁ", name, maxsplit=1)[0]


def summarize(codes: dict[str, int | None], equivalent: set[str]) -> dict[str, Counter]:
    table: dict[str, Counter] = defaultdict(Counter)
    for name, code in codes.items():
        kind = ("equivalent" if name in equivalent and code in SURVIVED | NO_TESTS else
                "killed" if code in KILLED else "survived" if code in SURVIVED else
                "no tests" if code in NO_TESTS else "not checked" if code in NOT_CHECKED else "other")
        table[module_of(name)][kind] += 1
    return table


def score(counts: Counter) -> float | None:
    scored = counts["killed"] + counts["survived"] + counts["no tests"]
    return counts["killed"] / scored if scored else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--equivalent", type=Path, default=Path("tests/README.md"))
    parser.add_argument("--survivors", action="store_true", help="list surviving and untested mutants")
    parser.add_argument("--json", type=Path, help="also write the table as JSON")
    parser.add_argument("--sample", type=float, help="score only this fraction of the mutants (hash of the name)")
    parser.add_argument("--print-sample", type=float, metavar="FRACTION",
                        help="print the names of the mutants in the sample and exit")
    args = parser.parse_args(argv)
    codes = results(args.mutants)
    if not codes:
        print(f"no mutants under {args.mutants}: run `make mutate` first", file=sys.stderr)
        return 1
    if args.print_sample is not None:
        print("\n".join(name for name in sorted(codes) if in_sample(name, args.print_sample)))
        return 0
    if args.sample is not None:
        codes = {name: code for name, code in codes.items() if in_sample(name, args.sample)}
    equivalent = equivalent_mutants(args.equivalent)
    table = summarize(codes, equivalent)
    columns = ["killed", "survived", "no tests", "equivalent", "not checked", "other"]
    print(f"{'module':<34}" + "".join(f"{c:>12}" for c in columns) + f"{'score':>8}")
    total: Counter = Counter()
    for module in sorted(table):
        counts = table[module]
        total.update(counts)
        value = score(counts)
        print(f"{module:<34}" + "".join(f"{counts[c]:>12}" for c in columns)
              + (f"{value:>8.1%}" if value is not None else f"{'-':>8}"))
    value = score(total)
    print(f"{'all':<34}" + "".join(f"{total[c]:>12}" for c in columns)
          + (f"{value:>8.1%}" if value is not None else f"{'-':>8}"))
    if args.survivors:
        for name, code in sorted(codes.items()):
            if (code in SURVIVED or code in NO_TESTS) and name not in equivalent:
                print(f"{'survived' if code in SURVIVED else 'no tests':<9} {name}")
    if args.json:
        args.json.write_text(json.dumps({m: dict(c) for m, c in sorted(table.items())}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
