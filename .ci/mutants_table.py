#!/usr/bin/env python3
"""Per-file table of a cargo-mutants run, and the gate: >= 95 % of viable mutants killed.

Usage: mutants_table.py [mutants.out ...] [--min PERCENT]: one table over every run given (make
mutants runs one a crate). A mutant found in several runs counts once, with its outcome in the
last run given (a `cargo mutants --iterate` run retests only the earlier run's survivors). With
--config FILE, mutants its `exclude_re` excludes are left out (runs made before an exclusion). A viable mutant is one that built;
killed means caught (a test failed). Timeouts are listed apart: a hang is not a behaviour a test
states, so they count as viable and not killed. Exit 1 below the minimum.
"""

import json
import re
import sys
from collections import OrderedDict

import tomllib

SUMMARY = {
    "CaughtMutant": "caught",
    "MissedMutant": "missed",
    "Unviable": "unviable",
    "Timeout": "timeout",
}


def main(argv):
    outs, minimum, excluded = [], 95.0, []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--min":
            minimum = float(args.pop(0))
        elif a == "--config":
            with open(args.pop(0), "rb") as f:
                excluded = [re.compile(r) for r in tomllib.load(f).get("exclude_re", [])]
        else:
            outs.append(a)
    latest = OrderedDict()
    for out in outs or ["mutants.out"]:
        with open(f"{out}/outcomes.json") as f:
            for o in json.load(f)["outcomes"]:
                mutant = o["scenario"].get("Mutant") if isinstance(o["scenario"], dict) else None
                if mutant is None:
                    continue  # the unmutated baseline
                if any(r.search(mutant["name"]) for r in excluded):
                    continue
                latest[(mutant["file"], mutant["name"])] = (mutant, o)
    rows = OrderedDict()
    missed = []
    for mutant, o in latest.values():
        kind = SUMMARY.get(o["summary"], o["summary"])
        row = rows.setdefault(mutant["file"], {k: 0 for k in SUMMARY.values()})
        row[kind] = row.get(kind, 0) + 1
        if kind in ("missed", "timeout"):
            missed.append(f"{kind.upper():8} {mutant['name']}")
    total = {k: sum(r.get(k, 0) for r in rows.values()) for k in SUMMARY.values()}
    print(f"{'file':48} {'caught':>6} {'missed':>6} {'unviab':>6} {'t/out':>6} {'killed':>7}")
    for name, r in sorted(rows.items()) + [("TOTAL", total)]:
        viable = r["caught"] + r["missed"] + r["timeout"]
        pct = 100.0 * r["caught"] / viable if viable else 100.0
        print(
            f"{name:48} {r['caught']:6} {r['missed']:6} {r['unviable']:6} {r['timeout']:6} {pct:6.1f}%"
        )
    for line in missed:
        print(line)
    viable = total["caught"] + total["missed"] + total["timeout"]
    pct = 100.0 * total["caught"] / viable if viable else 100.0
    if pct < minimum:
        print(
            f"racegate: {pct:.1f} % of viable mutants killed, below {minimum:.0f} %",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
