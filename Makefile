# The README's commands. `make test` is what CI runs.
CARGO ?= cargo
LOOM_FLAGS := --cfg racegate_loom

.PHONY: run test py loom mutants lint bench ci conformance wheel

# The tests' Python (see python/requirements.txt) lives in a venv of its own under target/, so a
# fresh machine needs only python3 with venv, and nothing is installed globally. The stamp is
# written last: an interrupted install leaves no stamp and the next run starts over.
PYTHON3 ?= python3
PY_ENV := target/py
PY_STAMP := $(PY_ENV)/installed.stamp
PY_NEEDS := racegate: make test needs python3 (3.11 or newer) with venv (Debian: apt-get install python3 python3-venv)

## Run the regression gate on the bundled scenarios; also write the HTML report to $(REPORT).
REPORT ?= target/racegate-report.html
run:
	@mkdir -p $(dir $(REPORT))
	$(CARGO) run --release --quiet -- run scenarios/ --report $(REPORT)

## Every unit, integration and doc test; the Python-driven ones use the venv from `make py`.
test: py
	RACEGATE_PYTHON=$(abspath $(PY_ENV)/bin/python) $(CARGO) test --workspace --all-targets
	RACEGATE_PYTHON=$(abspath $(PY_ENV)/bin/python) $(CARGO) test --workspace --doc

## The tests' Python environment in target/py; does nothing until python/requirements.txt changes.
py: $(PY_STAMP)

# Rebuilt from scratch on a change, so a package dropped from the file is gone from the venv too.
# Debian ships `venv` without `ensurepip` unless python3-venv is installed, so probe for both.
$(PY_STAMP): python/requirements.txt
	@$(PYTHON3) -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' \
		>/dev/null 2>&1 || { echo "$(PY_NEEDS)" >&2; exit 1; }
	@echo "racegate: creating $(PY_ENV) from python/requirements.txt"
	@rm -rf $(PY_ENV)
	@$(PYTHON3) -m venv $(PY_ENV) || { rm -rf $(PY_ENV); echo "$(PY_NEEDS)" >&2; exit 1; }
	$(PY_ENV)/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements.txt
	@touch $@

## The conformance suite: the fake and the real-socket transports against Starlette under uvicorn
## (docs/conformance.md). Needs the Python environment (`make py`, or RACEGATE_PYTHON). Prints the
## case table, then ends with exactly one summary line.
conformance: py
	@mkdir -p target && rm -f target/conformance-summary.txt
	@RACEGATE_PYTHON=$(abspath $(PY_ENV)/bin/python) $(CARGO) test -p racegate-net --test conformance -- --nocapture > target/conformance.log 2>&1; \
	  status=$$?; grep -v '^conformance: ' target/conformance.log; \
	  cat target/conformance-summary.txt 2>/dev/null || echo "conformance: did not run (see above)"; \
	  exit $$status

## The loom models, in release, in their own target dir (a changed RUSTFLAGS rebuilds everything);
## then the deliberately broken machine, which ready_handoff must find violated (its own dir too).
loom:
	RUSTFLAGS="$(LOOM_FLAGS)" $(CARGO) test -p racegate-core --release --target-dir target/loom \
		--test 'loom_*' -- --nocapture --test-threads=1
	RUSTFLAGS="$(LOOM_FLAGS) --cfg racegate_loom_broken" $(CARGO) test -p racegate-core --release \
		--target-dir target/loom-broken --test loom_machine -- --nocapture broken_

## Mutation testing of the files that decide verdicts (cargo-mutants, outside CI: about 5 minutes
## on 2 cores). Settings and every excluded mutant, with its reason, are in .cargo/mutants.toml;
## the table in target/mutants and the gate (>= 95 % of viable mutants killed) come last.
## Install with `cargo install --locked cargo-mutants`.
MUTANTS_JOBS ?= 2
MUTANTS_MIN ?= 95
# One file (or glob) a line; each is mutated and judged by the tests of the crate that owns it.
MUTANTS_FILES := \
	harness/core/src/*.rs \

mutants:
	@$(CARGO) mutants --version >/dev/null 2>&1 || \
		{ echo "racegate: make mutants needs cargo-mutants (cargo install --locked cargo-mutants)" >&2; exit 1; }
	@# cargo-mutants exits 2 for missed mutants and 3 for timeouts: results the table judges.
	$(CARGO) mutants --workspace -j $(MUTANTS_JOBS) --output target/mutants \
		$(foreach f,$(MUTANTS_FILES),-f '$(f)') || { rc=$$?; [ $$rc -eq 2 ] || [ $$rc -eq 3 ]; }
	$(PYTHON3) .ci/mutants_table.py target/mutants/mutants.out --min $(MUTANTS_MIN)

## The Python wheel (maturin, `bindings = "bin"`) into target/wheels, then installed into a fresh
## virtual environment where its racegate serves and probes (tests/wheel.sh).
wheel: py
	rm -f target/wheels/racegate-*.whl
	$(PY_ENV)/bin/maturin build --release --locked --quiet -o target/wheels
	bash tests/wheel.sh target/wheels/racegate-*.whl $(PYTHON3)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench --workspace

ci: lint test loom run
