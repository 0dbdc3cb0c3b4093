"""Compare two run directories column by column: the "same numbers" check of a refactor.

    python tools/compare_runs.py RUN_A RUN_B [--rtol 1e-6] [--ignore COL ...]

Reads metrics.parquet and module_metrics.parquet of both runs and reports, per table, every
column whose values differ by more than ``rtol`` (relative, elementwise; lists compared
element by element; nulls must match), and columns present in only one run. Wall-clock columns
(tokens/s and the like) are skipped. Exit code 0 when everything matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

#: columns that measure the machine, not the simulation
WALL_CLOCK = ("tokens_per_s", "module_tokens_per_s", "wall_s", "time")
TABLES = ("metrics.parquet", "module_metrics.parquet")


def _flat(v: Any) -> list[Any]:
    if isinstance(v, (list, tuple)):
        return [x for e in v for x in _flat(e)]
    return [v]


def _close(a: Any, b: Any, rtol: float) -> bool:
    fa, fb = _flat(a), _flat(b)
    if len(fa) != len(fb):
        return False
    for x, y in zip(fa, fb, strict=True):
        if x is None or y is None:
            if x is not y:
                return False
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if isinstance(x, float) and math.isnan(x):
                if not (isinstance(y, float) and math.isnan(y)):
                    return False
            elif abs(x - y) > rtol * max(abs(x), abs(y), 1e-12):
                return False
        elif x != y:
            return False
    return True


def compare(a: Path, b: Path, rtol: float = 1e-6, ignore: tuple[str, ...] = ()) -> list[str]:
    """Every difference between run directories ``a`` and ``b``, one line each."""
    problems = []
    for name in TABLES:
        fa, fb = a / name, b / name
        if not fa.exists() and not fb.exists():
            continue
        if not (fa.exists() and fb.exists()):
            problems.append(f"{name}: only in {a if fa.exists() else b}")
            continue
        ta, tb = pq.read_table(fa).to_pylist(), pq.read_table(fb).to_pylist()
        if len(ta) != len(tb):
            problems.append(f"{name}: {len(ta)} rows vs {len(tb)}")
            continue
        cols_a = dict.fromkeys(k for r in ta for k in r)
        cols_b = dict.fromkeys(k for r in tb for k in r)
        for c in cols_a.keys() ^ cols_b.keys():
            problems.append(f"{name}: column {c!r} only in {a if c in cols_a else b}")
        for c in cols_a.keys() & cols_b.keys():
            if c in WALL_CLOCK or c in ignore:
                continue
            bad = [i for i, (ra, rb) in enumerate(zip(ta, tb, strict=True))
                   if not _close(ra.get(c), rb.get(c), rtol)]  # fmt: skip
            if bad:
                i = bad[0]
                first = f"first: row {i}, {ta[i].get(c)!r} vs {tb[i].get(c)!r}"
                problems.append(
                    f"{name}: column {c!r} differs in {len(bad)} of {len(ta)} rows ({first})"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--ignore", nargs="*", default=[], help="columns to skip (named bug fixes)")
    args = p.parse_args(argv)
    problems = compare(args.a, args.b, args.rtol, tuple(args.ignore))
    for line in problems:
        print(line)
    print("same numbers" if not problems else f"{len(problems)} difference(s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
