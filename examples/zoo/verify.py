"""Runs every zoo scenario against its routes N times and checks each verdict.

Each scenario file names its runs in comments at its top, one a line:

    # probe (buggy): --app examples.zoo.x:app --path /ws/buggy -> fail: abnormal-close
    # probe (fixed): --app examples.zoo.x:app --path /ws/fixed -> pass

(the arguments are `racegate probe`'s; after `->` the expected verdict and, for a failure,
exactly the invariants it must break). A run matches when its verdict and its set of broken
invariants are the expected ones. Usage, from the repository's root:

    RACEGATE_PYTHON=target/py/bin/python python3 examples/zoo/verify.py \
        [--racegate PATH] [--runs N] [SCENARIO ...]

Prints one line per scenario and route with how many of the N runs matched, and exits 1 when
any run did not.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
LINE = re.compile(r"^#\s*probe \((?P<label>[\w-]+)\):\s*(?P<args>.*?)\s*->\s*(?P<expect>.*)$")


def runs_of(path: pathlib.Path) -> list[tuple[str, list[str], str, set[str]]]:
    out = []
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        verdict, _, invariants = match["expect"].partition(":")
        wanted = {i.strip() for i in invariants.split(",") if i.strip()}
        out.append((match["label"], shlex.split(match["args"]), verdict.strip(), wanted))
    return out


def probe(racegate: str, args: list[str], scenario: pathlib.Path) -> tuple[str, set[str]]:
    cmd = [racegate, "probe", *args, "--scenario", str(scenario), "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        return f"error {done.returncode}: {done.stderr.strip()[-300:]}", set()
    result = json.loads(done.stdout)["scenarios"][0]
    return result["verdict"], {v["invariant"] for v in result["violations"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--racegate", default="racegate")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("scenarios", nargs="*", type=pathlib.Path)
    opts = parser.parse_args()
    files = opts.scenarios or sorted((HERE / "scenarios").glob("*.toml"))
    failed = False
    for scenario in files:
        for label, args, verdict, wanted in runs_of(scenario):
            seen: dict[tuple[str, tuple[str, ...]], int] = {}
            matched = 0
            for _ in range(opts.runs):
                got, broken = probe(opts.racegate, args, scenario)
                seen[(got, tuple(sorted(broken)))] = seen.get((got, tuple(sorted(broken))), 0) + 1
                matched += got == verdict and broken == wanted
            failed |= matched != opts.runs
            outcomes = "; ".join(
                f"{v}{' [' + ', '.join(i) + ']' if i else ''} x{n}" for (v, i), n in seen.items()
            )
            print(f"{scenario.stem:48} {label:6} {matched:2}/{opts.runs}  {outcomes}")
            sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
