# The README's commands. `make test` is what CI runs.
CARGO ?= cargo
LOOM_FLAGS := --cfg racegate_loom

.PHONY: run test py loom mutants mutants-diff mutants-diff-touches lint bench ci conformance wheel zoo

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

## The zoo's table (docs/zoo.md): each reported bug of examples/zoo under `probe --app` (10 runs a
## route), `explore --app` from its race-free twin (seeds 1-5) and `probe --url` against a real
## uvicorn (20 runs), measured by examples/zoo/measure.py and printed as the table's Markdown rows
## (progress on standard error). Builds the release binary first if it is out of date.
zoo: py
	$(CARGO) build --release --quiet
	RACEGATE_PYTHON=$(abspath $(PY_ENV)/bin/python) $(PY_ENV)/bin/python examples/zoo/measure.py \
		--racegate target/release/racegate

## The loom models, in release, in their own target dir (a changed RUSTFLAGS rebuilds everything);
## then the deliberately broken machine, which ready_handoff must find violated (its own dir too).
loom:
	RUSTFLAGS="$(LOOM_FLAGS)" $(CARGO) test -p racegate-core --release --target-dir target/loom \
		--test 'loom_*' -- --nocapture --test-threads=1
	RUSTFLAGS="$(LOOM_FLAGS) --cfg racegate_loom_broken" $(CARGO) test -p racegate-core --release \
		--target-dir target/loom-broken --test loom_machine -- --nocapture broken_

## Mutation testing of the files that decide verdicts (cargo-mutants, outside CI: about three
## hours on 2 cores, from the parts measured on 2026-11-30: the core 4 minutes, the probe 5, the
## replay group's 468 mutants about 0.4 minutes each (185 of them took 74); docs/loom.md has
## the tables). Settings and
## every excluded mutant, with its reason, are in .cargo/mutants.toml; the per-file table of all
## groups and the gate (>= 95 % of viable mutants killed) come last. One group per owning crate,
## run one after the other, each judged by its own tests (MUTANTS_JUDGES_<crate>).
## Install with `cargo install --locked cargo-mutants`.
MUTANTS_JOBS ?= 2
MUTANTS_MIN ?= 95
# Extra cargo-mutants arguments for every group. `MUTANTS_ARGS=--iterate` resumes a run that was
# stopped: each group skips the mutants its last run caught or found unviable and tests the rest
# (missed, timed out, never reached); cargo-mutants moves the last run to mutants.out.old, and
# the table reads both, the newer outcome winning. One resume deep: a second --iterate moves the
# first resume there instead.
MUTANTS_ARGS ?=
# One file (or glob) a line; each is mutated and judged by the tests of the crate that owns it.
MUTANTS_FILES := \
	harness/core/src/*.rs \
	harness/replay/src/endpoint/state_machine.rs \
	harness/replay/src/transport/fake.rs \
	harness/replay/src/checker.rs \
	harness/replay/src/oracle.rs \
	harness/replay/src/history.rs \
	harness/replay/src/scenario/raw.rs \
	harness/probe/src/check.rs \

MUTANTS_GROUPS := core replay probe
# The core: its own tests (cargo-mutants' default), lost wake-ups and all (mutants.toml's floor).
MUTANTS_JUDGES_core :=
# The replay crate: its own tests (with production.rs, the [[production]] symptoms, and
# trace_pins.rs, whose pinned traces any changed byte of a replay fails); the root package's
# scenario, CLI and explore tests, which run the bundled scenarios through the endpoints, the
# oracle and the exit codes; and the probe's one_judge.rs, the same histories through every
# driver's path to the checker. Not the root's
# tests/probe.rs: 35 s of real sockets a mutant (about 100 minutes over this group on 2 jobs),
# judging through the same checker that one_judge.rs and the replay tests already judge; nor
# logs.rs, net_cli.rs (log format and real-socket plumbing, no verdict). cargo-mutants 27.1 runs
# its baseline with the mutated package's tests only (not --test-package), so the test selection
# below fails it: the baseline is skipped (`make test` is the unmutated run) and the timeout set
# here. A hung mutant is stopped after 300 s: these tests take about 2 minutes unloaded in this
# profile (the two explore.rs files 40 s and 62 s of it), cargo stops at the first failing test
# binary, so a survivor runs them all; none waits on a real clock for longer than 5 s.
MUTANTS_JUDGES_replay := --test-package racegate-replay,racegate,racegate-probe \
	--baseline skip --timeout 300 \
	$(foreach a,--lib --test=explore --test=liveness --test=oracle --test=prop_state_machine \
		--test=report --test=fixed_endpoint --test=scenarios --test=cli --test=one_judge \
		--test=production --test=trace_pins,\
		--cargo-test-arg=$(a))
# The probe's checks: the probe crate's tests (lib, one_judge.rs, live.rs against a live server).
MUTANTS_JUDGES_probe := --test-package racegate-probe --minimum-test-timeout 30
MUTANTS_OUT := target/mutants

mutants:
	@$(CARGO) mutants --version >/dev/null 2>&1 || \
		{ echo "racegate: make mutants needs cargo-mutants (cargo install --locked cargo-mutants)" >&2; exit 1; }
	@mkdir -p $(MUTANTS_OUT)
	@# cargo-mutants exits 2 for missed mutants and 3 for timeouts: results the table judges.
	@set -e; $(foreach g,$(MUTANTS_GROUPS),$(if $(filter harness/$(g)/%,$(MUTANTS_FILES)),\
		echo "racegate: mutants of $(g)"; \
		$(CARGO) mutants --workspace -j $(MUTANTS_JOBS) --profile mutants --output $(MUTANTS_OUT)/$(g) \
			$(MUTANTS_JUDGES_$(g)) $(MUTANTS_ARGS) \
			$(foreach f,$(filter harness/$(g)/%,$(MUTANTS_FILES)),-f '$(f)') \
			|| { rc=$$?; [ $$rc -eq 2 ] || [ $$rc -eq 3 ]; };))
	$(PYTHON3) .ci/mutants_table.py --min $(MUTANTS_MIN) --config .cargo/mutants.toml \
		$(foreach g,$(MUTANTS_GROUPS),$(if $(filter harness/$(g)/%,$(MUTANTS_FILES)),\
			$(if $(findstring --iterate,$(MUTANTS_ARGS)),$$(ls -d $(MUTANTS_OUT)/$(g)/mutants.out.old 2>/dev/null)) \
			$(MUTANTS_OUT)/$(g)/mutants.out))

## The mutants of the last commit's change in MUTANTS_FILES (cargo-mutants --in-diff), judged as
## in `make mutants`, for CI: capped at MUTANTS_DIFF_MAX mutants a crate so that it stays within
## about 15 minutes on 2 cores; a larger change runs one shard of it (chosen by the commit, so
## reruns agree), and says so. The table and the gate come last, as in `make mutants`.
MUTANTS_DIFF_MAX ?= 40
MUTANTS_DIFF_BASE ?= HEAD~1
mutants-diff:
	@mkdir -p $(MUTANTS_OUT)-diff && git diff $(MUTANTS_DIFF_BASE) HEAD > $(MUTANTS_OUT)-diff/last.diff
	@set -e; outs=; $(foreach g,$(MUTANTS_GROUPS),$(if $(filter harness/$(g)/%,$(MUTANTS_FILES)),\
		args="--workspace --in-diff $(MUTANTS_OUT)-diff/last.diff \
			$(foreach f,$(filter harness/$(g)/%,$(MUTANTS_FILES)),-f '$(f)')"; \
		n=$$(eval $(CARGO) mutants --list $$args | wc -l); \
		if [ $$n -gt 0 ]; then \
			shard=; if [ $$n -gt $(MUTANTS_DIFF_MAX) ]; then \
				k=$$(( (n + $(MUTANTS_DIFF_MAX) - 1) / $(MUTANTS_DIFF_MAX) )); \
				i=$$(( $$(git rev-parse --short=7 HEAD | xargs -I{} printf '%d' 0x{}) % k )); \
				shard="--shard $$i/$$k"; \
				echo "racegate: $(g): $$n mutants in the change (more than $(MUTANTS_DIFF_MAX)): running only shard $$i/$$k"; \
			else echo "racegate: $(g): $$n mutants in the change"; fi; \
			eval $(CARGO) mutants $$args -j $(MUTANTS_JOBS) --profile mutants $$shard \
				--output $(MUTANTS_OUT)-diff/$(g) $(MUTANTS_JUDGES_$(g)) \
				|| { rc=$$?; [ $$rc -eq 2 ] || [ $$rc -eq 3 ]; }; \
			outs="$$outs $(MUTANTS_OUT)-diff/$(g)/mutants.out"; \
		else echo "racegate: $(g): no mutants in the change"; fi;)) \
	if [ -n "$$outs" ]; then $(PYTHON3) .ci/mutants_table.py --min $(MUTANTS_MIN) --config .cargo/mutants.toml $$outs; fi

## Prints `yes` when the last commit changes a file in MUTANTS_FILES, else `no`: CI installs
## cargo-mutants and runs mutants-diff only then (.ci/run).
mutants-diff-touches:
	@git diff --quiet $(MUTANTS_DIFF_BASE) HEAD -- $(MUTANTS_FILES) && echo no || echo yes

## The Python wheel (maturin, `bindings = "bin"`) into target/wheels, then installed into a fresh
## virtual environment where its racegate serves and probes (tests/wheel.sh).
wheel: py
	rm -f target/wheels/racegate-*.whl
	$(PY_ENV)/bin/maturin build --release --locked --quiet -o target/wheels
	bash tests/wheel.sh target/wheels/racegate-*.whl $(PYTHON3)

## Rust: rustfmt and clippy; Python (the driver, the examples, the fixtures): ruff from the venv.
lint: py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(PY_ENV)/bin/ruff check .
	$(PY_ENV)/bin/ruff format --check .

bench:
	$(CARGO) bench --workspace

ci: lint test loom run
