# The README's commands. `make test` is what CI runs.
CARGO ?= cargo
LOOM_FLAGS := --cfg racegate_loom

.PHONY: run test loom lint bench ci conformance

## Run the regression gate on the bundled scenarios; also write the HTML report to $(REPORT).
REPORT ?= target/racegate-report.html
run:
	@mkdir -p $(dir $(REPORT))
	$(CARGO) run --release --quiet -- run scenarios/ --report $(REPORT)

## Every unit, integration and doc test.
test:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

## The conformance suite: the fake and the real-socket transports against Starlette under uvicorn
## (docs/conformance.md). Needs the Python environment (`make py`, or RACEGATE_PYTHON). Prints the
## case table, then ends with exactly one summary line.
conformance:
	@mkdir -p target && rm -f target/conformance-summary.txt
	@$(CARGO) test -p racegate-net --test conformance -- --nocapture > target/conformance.log 2>&1; \
	  status=$$?; grep -v '^conformance: ' target/conformance.log; \
	  cat target/conformance-summary.txt 2>/dev/null || echo "conformance: did not run (see above)"; \
	  exit $$status

## The loom models, in release, in their own target dir (a changed RUSTFLAGS rebuilds everything).
loom:
	RUSTFLAGS="$(LOOM_FLAGS)" $(CARGO) test -p racegate-core --release --target-dir target/loom \
		--test 'loom_*' -- --nocapture --test-threads=1

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench --workspace

ci: lint test loom run
