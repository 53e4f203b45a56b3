"""Measures the zoo's table (docs/zoo.md) and prints its rows as Markdown.

For each bug (a scenario `<name>.toml` with a race-free twin `<name>-race-free.toml`, whose
`# probe (...)` header lines name the runs, as verify.py reads them):

- `probe --app`, buggy and fixed routes, `--app-runs` times each (default 10): how many runs
  gave exactly the expected verdict and invariant set;
- `explore --app` from the race-free twin against the buggy route, `--cases` cases (default
  1000), seeds 1 to `--seeds` (default 5), `--jobs 1`: K+1 for the first failing case K, or
  `>CASES` when none fails; the median and the values;
- `probe --url` against the module's `app` under a real uvicorn on 127.0.0.1 (a free port, the
  scenario's `--ws`), the buggy route, `--url-runs` times (default 20): how many runs failed
  with at least one of the expected invariants. One server serves all the runs
  of a bug and is killed by its PID when they end.

`--app-runs 0`, `--seeds 0` or `--url-runs 0` leaves that column out ("not measured").

Usage, from the repository's root (the bugs' names select a subset):

    RACEGATE_PYTHON=target/py/bin/python target/py/bin/python examples/zoo/measure.py \
        [--racegate target/release/racegate] [--app-runs 10] [--url-runs 20] \
        [--cases 1000] [--seeds 5] [NAME ...]

Progress goes to standard error, the table to standard output.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shlex
import socket
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCENARIOS = HERE / "scenarios"
LINE = re.compile(r"^#\s*probe \((?P<label>[\w-]+)\):\s*(?P<args>.*?)\s*->\s*(?P<expect>.*)$")
FOUND = re.compile(r"case (?P<case>\d+) violates (?P<invariant>[\w-]+); shrunk")

# Bounds on every wait, in seconds.
PROBE_APP_WAIT = 120
PROBE_URL_WAIT = 120
EXPLORE_WAIT = 1800
UVICORN_START = 20
UVICORN_STOP = 10


def header(opts) -> str:
    return (
        "| bug | source | pattern | scenario | buggy: verdict, invariants | fixed "
        f"| `probe --app`: runs reproducing it, of {opts.app_runs} "
        f"| `explore --app` from the race-free twin: cases to the first failure, median "
        f"(seeds 1–{opts.seeds}) "
        f"| `probe --url` on real uvicorn: runs reproducing it, of {opts.url_runs} |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )


class Run:
    """One `# probe (label): ARGS -> VERDICT: invariants` line."""

    def __init__(self, label: str, args: list[str], verdict: str, wanted: set[str]) -> None:
        self.label = label
        self.args = args
        self.verdict = verdict
        self.wanted = wanted

    def option(self, name: str) -> str | None:
        if name in self.args:
            return self.args[self.args.index(name) + 1]
        return None

    def expected(self) -> str:
        return self.verdict + (": " + ", ".join(sorted(self.wanted)) if self.wanted else "")


def runs_of(path: pathlib.Path) -> dict[str, Run]:
    runs = {}
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        verdict, _, invariants = match["expect"].partition(":")
        wanted = {i.strip() for i in invariants.split(",") if i.strip()}
        runs[match["label"]] = Run(
            match["label"], shlex.split(match["args"]), verdict.strip(), wanted
        )
    return runs


def catalogue() -> dict[str, tuple[str, str, str, str]]:
    """The zoo README's table: scenario name -> (bug, source, pattern, scenario cell)."""
    rows = {}
    for line in (HERE / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 4:
            continue
        name = re.match(r"`([\w-]+)`(.*)", cells[3])
        if name is None:
            continue
        rows[name[1]] = (cells[0], cells[1], cells[2], name[2].strip())
    return rows


def outcome(doc: dict) -> tuple[str, frozenset[str]]:
    result = doc["scenarios"][0]
    return result["verdict"], frozenset(v["invariant"] for v in result["violations"])


def racegate(cmd: list[str], wait: float) -> subprocess.CompletedProcess | str:
    """Runs racegate from the repository's root, within `wait` seconds; a string on error."""
    try:
        return subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=wait, check=False
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {wait} s"


def probe_json(cmd: list[str], wait: float) -> tuple[str, frozenset[str]]:
    done = racegate([*cmd, "--format", "json"], wait)
    if isinstance(done, str):
        return f"error ({done})", frozenset()
    if done.returncode not in (0, 1):
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"error {done.returncode} ({last[:120]})", frozenset()
    return outcome(json.loads(done.stdout))


def tally(outcomes: list[tuple[str, frozenset[str]]], hit, every: bool = False) -> str:
    """`N of M`, then what the runs gave: the runs that missed, or with `every` all of them."""
    hits = sum(1 for o in outcomes if hit(o))
    seen: dict[str, int] = {}
    for verdict, broken in outcomes:
        if every or not hit((verdict, broken)):
            key = verdict + (": " + ", ".join(sorted(broken)) if broken else "")
            seen[key] = seen.get(key, 0) + 1
    text = f"{hits} of {len(outcomes)}"
    if seen:
        text += " (" + "; ".join(f"{k} ×{n}" for k, n in seen.items()) + ")"
    return text


def probe_app(opts, run: Run, scenario: pathlib.Path) -> str:
    cmd = [opts.racegate, "probe", *run.args, "--scenario", str(scenario.relative_to(ROOT))]
    outcomes = []
    for _ in range(opts.app_runs):
        outcomes.append(probe_json(cmd, PROBE_APP_WAIT))
    exact = (run.verdict, frozenset(run.wanted))
    return tally(outcomes, lambda o: o == exact)


def explore(opts, run: Run, race_free: pathlib.Path) -> tuple[str, dict[str, list[int]]]:
    """The median and the values of K+1 over the seeds, and the seeds that found each
    invariant (the one explore names and shrinks on)."""
    values: list[float] = []
    found: dict[str, list[int]] = {}
    for seed in range(1, opts.seeds + 1):
        cmd = [
            opts.racegate,
            "explore",
            *run.args,
            "--scenario",
            str(race_free.relative_to(ROOT)),
            "--cases",
            str(opts.cases),
            "--seed",
            str(seed),
            "--jobs",
            "1",
        ]
        started = time.monotonic()
        done = racegate(cmd, EXPLORE_WAIT)
        took = time.monotonic() - started
        if isinstance(done, str) or done.returncode not in (0, 1):
            why = done if isinstance(done, str) else done.stderr.strip()[-300:]
            raise SystemExit(f"measure: {shlex.join(cmd)}: {why}")
        match = FOUND.search(done.stderr)
        if done.returncode == 1 and match is not None:
            values.append(int(match["case"]) + 1)
            found.setdefault(match["invariant"], []).append(seed)
        elif done.returncode == 0:
            values.append(float("inf"))
        else:
            raise SystemExit(f"measure: {shlex.join(cmd)}: exit 1 without a case")
        what = match["invariant"] if match is not None else "none"
        note(f"  explore seed {seed}: {shown(values[-1], opts.cases)}, {what} ({took:.1f} s)")
    median = statistics.median_low(values)
    cell = f"{shown(median, opts.cases)} ({', '.join(shown(v, opts.cases) for v in values)})"
    return cell, found


def shown(value: float, cases: int) -> str:
    return f">{cases}" if value == float("inf") else str(int(value))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_uvicorn(
    opts, app: str, ws: str | None, log: pathlib.Path
) -> tuple[subprocess.Popen, int]:
    """`python -m uvicorn APP` on a free port, once it accepts connections."""
    last = ""
    for _ in range(3):  # a port free when probed may be taken before uvicorn binds it
        port = free_port()
        cmd = [opts.python, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        if ws is not None:
            cmd += ["--ws", ws]
        with log.open("w") as out:
            server = subprocess.Popen(
                cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        deadline = time.monotonic() + UVICORN_START
        while time.monotonic() < deadline and server.poll() is None:
            if answers(port):
                return server, port
            time.sleep(0.1)
        stop(server)
        last = f"uvicorn ({shlex.join(cmd)}) did not come up; its log:\n{log.read_text()}"
    raise SystemExit(f"measure: {last}")


def stop(server: subprocess.Popen) -> None:
    """Stops the server by its PID: SIGTERM, then SIGKILL, and reaps it."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=UVICORN_STOP)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=UVICORN_STOP)


def probe_url(opts, run: Run, scenario: pathlib.Path) -> str:
    module = run.option("--app").partition(":")[0]
    log = ROOT / "target" / f"zoo-uvicorn-{scenario.stem}.log"
    log.parent.mkdir(exist_ok=True)
    server, port = start_uvicorn(opts, f"{module}:app", run.option("--ws"), log)
    try:
        url = f"ws://127.0.0.1:{port}{run.option('--path')}"
        cmd = [opts.racegate, "probe", "--url", url, "--scenario", str(scenario.relative_to(ROOT))]
        outcomes = [probe_json(cmd, PROBE_URL_WAIT) for _ in range(opts.url_runs)]
    finally:
        stop(server)
    return tally(outcomes, lambda o: o[0] == "fail" and bool(o[1] & run.wanted), every=True)


def live_caveat(run: Run, scenario: pathlib.Path) -> str:
    """What the live server does not have that the scenario's --app run relies on."""
    accept = re.search(r"^accept_ms\s*=\s*(\d+)", scenario.read_text(), re.MULTILINE)
    if "--hooks" in run.args:
        return "; hooks not applied: the app's own timings"
    if accept is not None and int(accept[1]) > 0:
        return f"; no `accept_ms` ({accept[1]} ms) live: uvicorn accepts at once"
    return ""


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(opts, name: str, about: tuple[str, str, str, str]) -> str:
    scenario = SCENARIOS / f"{name}.toml"
    race_free = SCENARIOS / f"{name}-race-free.toml"
    runs = runs_of(scenario)
    buggy, fixed = runs["buggy"], runs["fixed"]
    bug, source, pattern, extra = about
    reproduced = explored = live = "not measured"
    if opts.app_runs:
        note(f"{name}: probe --app x{opts.app_runs}")
        app_buggy = probe_app(opts, buggy, scenario)
        reproduced = f"{app_buggy} (fixed: {probe_app(opts, fixed, scenario)})"
    if opts.seeds:
        note(f"{name}: explore --app, seeds 1-{opts.seeds}")
        explored, found = explore(opts, runs_of(race_free)["buggy"], race_free)
        if set(found) - buggy.wanted:  # say which seeds found what
            explored += "; found " + ", ".join(
                f"{i} (seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))})"
                for i, seeds in sorted(found.items())
            )
    if opts.url_runs:
        note(f"{name}: probe --url x{opts.url_runs}")
        live = probe_url(opts, buggy, scenario) + live_caveat(buggy, scenario)
    link = f"[`{name}`](../examples/zoo/scenarios/{name}.toml)" + (f" {extra}" if extra else "")
    cells = [bug, source, pattern, link, buggy.expected(), fixed.expected()]
    cells += [reproduced, explored, live]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--racegate", default=str(ROOT / "target/release/racegate"))
    parser.add_argument(
        "--python",
        default=os.environ.get("RACEGATE_PYTHON", str(ROOT / "target/py/bin/python")),
        help="the Python that runs uvicorn (default: RACEGATE_PYTHON, else target/py)",
    )
    parser.add_argument("--app-runs", type=int, default=10)
    parser.add_argument("--url-runs", type=int, default=20)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("names", nargs="*")
    opts = parser.parse_args()
    os.environ["RACEGATE_PYTHON"] = opts.python
    about = catalogue()
    # The README's order, for the bugs that have a runnable scenario.
    names = opts.names or [n for n in about if (SCENARIOS / f"{n}.toml").exists()]
    print(header(opts), flush=True)
    for name in names:
        if name not in about:
            raise SystemExit(f"measure: {name} is not in examples/zoo/README.md's table")
        print(measure(opts, name, about[name]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
