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
echo "wheel: $passed passed, 0 failed"
