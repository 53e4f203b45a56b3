#!/usr/bin/env bash
# The Python wheel as a Python team gets it: install the wheel built from this checkout into a
# fresh virtual environment, run `racegate --version`, serve the fixed endpoint with a bundled
# scenario's timings and probe it, all with the wheel's binary. `racegate serve` listens on
# 127.0.0.1 with a free port and is stopped by its PID whatever happens.
# Usage: tests/wheel.sh WHEEL PYTHON
set -euo pipefail
wheel=${1:?usage: tests/wheel.sh WHEEL PYTHON}
python=${2:?usage: tests/wheel.sh WHEEL PYTHON}
work=$(mktemp -d)
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
passed=0
check() { echo "ok: $1"; passed=$((passed + 1)); }

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$wheel"
bin="$work/venv/bin/racegate"
[ -x "$bin" ] || { echo "FAILED: the wheel put no racegate on the venv's PATH"; exit 1; }
version=$("$bin" --version)
[ "$version" = "racegate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] \
  || { echo "FAILED: racegate --version said '$version'"; exit 1; }
check "racegate --version: $version"

# Run from an empty folder: the installed binary must bring its own scenarios.
cd "$work"
"$bin" scenarios export scenarios-here >/dev/null 2>&1
[ -f scenarios-here/staging-user-101463487227881885914.toml ] || { echo "FAILED: no bundled scenarios"; exit 1; }
check "the bundled scenarios come with the wheel"

"$bin" serve --endpoint state-machine --addr 127.0.0.1:0 \
  --scenario scenarios-here/staging-user-101463487227881885914.toml >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
url=""
for _ in $(seq 100); do
  url=$(sed -n 's/^listening on //p' "$work/serve.out")
  [ -n "$url" ] && break
  sleep 0.05
done
[ -n "$url" ] || { echo "FAILED: racegate serve did not start"; cat "$work/serve.err"; exit 1; }
if "$bin" probe --url "$url/ws" --scenario scenarios-here/staging-user-101463487227881885914.toml \
  --timeout-ms 8000 >"$work/probe.out" 2>&1; then
  check "probe of the served fix passes ($url)"
else
  echo "FAILED: probe against the served fix"; cat "$work/probe.out"; exit 1
fi
# A Python team's project: the example backend as their app, [tool.racegate] in pyproject.toml,
# the two staging scenarios. A flag-less probe and pytest (through the wheel's plugin) both fail
# the production route and pass the fixed one.
repo=$OLDPWD
"$work/venv/bin/pip" install --quiet --disable-pip-version-check \
  -r <(grep -E '^(pytest|fastapi|starlette|uvicorn|websockets)==' "$repo/python/requirements.txt")
project="$work/project"
mkdir -p "$project/scenarios"
cp -r "$repo/examples/chat_backend" "$project/chat_backend"
cp "$repo/scenarios/staging-user-101463487227881885914.toml" \
  "$repo/scenarios/staging-e2e-staging_pipeline.toml" "$project/scenarios/"
cat >"$project/pyproject.toml" <<'TOML'
[project]
name = "chat-backend"
version = "0.1.0"

[tool.racegate]
app = "chat_backend.app:app"
path = "/ws"
scenarios = ["scenarios"]
TOML
cd "$project"
export PATH="$work/venv/bin:$PATH" VIRTUAL_ENV="$work/venv"
unset RACEGATE_PYTHON
if "$bin" probe >"$work/probe-app.out" 2>&1; then
  echo "FAILED: a flag-less probe passed the production route"; cat "$work/probe-app.out"; exit 1
fi
grep -q "accept-first" "$work/probe-app.out" || { echo "FAILED: no accept-first"; cat "$work/probe-app.out"; exit 1; }
check "a flag-less racegate probe reads [tool.racegate] and fails the production route"
"$bin" probe --path /ws/fixed >"$work/probe-fixed.out" 2>&1 \
  || { echo "FAILED: --path /ws/fixed"; cat "$work/probe-fixed.out"; exit 1; }
check "--path /ws/fixed passes"
if "$work/venv/bin/python" -m pytest -q -p no:cacheprovider --junitxml="$work/junit.xml" \
  >"$work/pytest.out" 2>&1; then
  echo "FAILED: pytest passed the production route"; cat "$work/pytest.out"; exit 1
fi
grep -q "2 failed" "$work/pytest.out" || { echo "FAILED: pytest did not fail both scenarios"; cat "$work/pytest.out"; exit 1; }
grep -q "message-lost" "$work/pytest.out" || { echo "FAILED: no violation in pytest's report"; cat "$work/pytest.out"; exit 1; }
grep -q 'testcase .*name="staging-user-101463487227881885914"' "$work/junit.xml" \
  || { echo "FAILED: the JUnit file names no scenario"; cat "$work/junit.xml"; exit 1; }
check "pytest collects the configured scenarios and fails the production route (JUnit too)"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider -k staging-user \
  --racegate-arg=--path --racegate-arg=/ws/fixed >"$work/pytest-fixed.out" 2>&1 \
  || { echo "FAILED: pytest of the fixed route"; cat "$work/pytest-fixed.out"; exit 1; }
grep -q "1 passed, 1 deselected" "$work/pytest-fixed.out" \
  || { echo "FAILED: -k did not select one scenario"; cat "$work/pytest-fixed.out"; exit 1; }
check "pytest -k selects a scenario, and the fixed route passes"
echo "wheel: $passed passed, 0 failed"
