"""racegate's pytest plugin: the scenario files a project's `[tool.racegate]` names, as tests.

With racegate installed (the wheel registers this plugin through the `pytest11` entry point)
and a `pyproject.toml` like

    [tool.racegate]
    app = "myapp.main:app"
    path = "/ws"
    scenarios = ["scenarios"]

`pytest` collects each scenario file under those folders as one test item, named by the
scenario's name, so `-k` selects scenarios and `--junitxml` reports them. The items are run by
one `racegate probe` for all the selected scenarios (the settings are the project's, read by
racegate itself: `racegate config`); an item fails when its scenario fails, or is inconclusive
unless `allow_inconclusive` is set, and shows the scenario's row of the table and its timeline.

pytest collects the files under the paths it searches: the root by default, else `testpaths`
(add the scenario folders there) or the command line (`pytest scenarios/`).
`-p no:racegate` turns the plugin off.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from racegate import find_racegate_bin

RESULTS = pytest.StashKey[dict]()
SETTINGS = pytest.StashKey[dict]()


class RacegateError(Exception):
    """racegate could not run the scenarios at all (bad input: exit 2)."""


class ScenarioFailed(Exception):
    """A scenario's verdict fails the gate; its text is what a person reads."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("racegate")
    group.addoption(
        "--racegate-trace",
        action="store_true",
        default=True,
        help="show each failing scenario's timeline (the default)",
    )
    group.addoption(
        "--racegate-no-trace",
        dest="racegate_trace",
        action="store_false",
        help="show only the failing scenario's row and violations",
    )
    group.addoption(
        "--racegate-arg",
        dest="racegate_args",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for `racegate probe`, over the project's settings (repeatable): "
        "--racegate-arg=--path --racegate-arg=/ws/fixed",
    )


def _racegate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [find_racegate_bin(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    """The project's settings, as racegate reads them (`racegate config --format json`): which
    scenario files are racegate's to collect."""
    done = _racegate(["config", "--format", "json"], Path(config.rootpath))
    if done.returncode != 0:
        raise pytest.UsageError(f"racegate config: {done.stderr.strip()}")
    settings = json.loads(done.stdout)
    config.stash[SETTINGS] = settings
    config.stash[RESULTS] = {}


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    settings = parent.config.stash.get(SETTINGS, None)
    if not settings or file_path.suffix != ".toml":
        return None
    for scenario in settings["scenarios"]:
        if Path(scenario["file"]) == file_path.resolve():
            return ScenarioFile.from_parent(parent, path=file_path, scenario=scenario["name"])
    return None


class ScenarioFile(pytest.File):
    def __init__(self, *, scenario: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario

    def collect(self):
        yield ScenarioItem.from_parent(self, name=self.scenario)


class ScenarioItem(pytest.Item):
    def runtest(self) -> None:
        results = run_selected(self.session)
        result = results.get(str(self.path.resolve()))
        if result is None:
            raise RacegateError(f"racegate reported nothing for {self.path}")
        allow = self.config.stash[SETTINGS]["allow_inconclusive"]
        verdict = result["verdict"]
        if verdict == "fail" or (verdict == "inconclusive" and not allow):
            raise ScenarioFailed(result["text"])

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (ScenarioFailed, RacegateError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"racegate scenario {self.name}"


def run_selected(session: pytest.Session) -> dict:
    """Probes every selected scenario in one racegate run, the first time an item needs it."""
    results = session.config.stash[RESULTS]
    if results:
        if "error" in results:
            raise RacegateError(results["error"])
        return results
    items = [i for i in session.items if isinstance(i, ScenarioItem)]
    args = ["probe", "--format", "json", *session.config.getoption("racegate_args")]
    if session.config.getoption("racegate_trace"):
        args.append("--trace")
    for item in items:
        args += ["--scenario", str(item.path)]
    done = _racegate(args, Path(session.config.rootpath))
    if done.returncode not in (0, 1):
        results["error"] = done.stderr.strip() or f"racegate exited {done.returncode}"
        raise RacegateError(results["error"])
    doc = json.loads(done.stdout)
    for scenario in doc["scenarios"]:
        results[str(Path(scenario["file"]).resolve())] = scenario
    return results
