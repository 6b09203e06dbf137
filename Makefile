# roguewatch: the two commands in the README are `sudo make run` and `sudo make test`;
# both do the set-up they need through `make deps`, which is idempotent.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps run test test-unit lint format bench attacks docs clean

deps: $(STAMP)
	@./packaging/install-deps.sh

# The venv is made from Debian's python3 with --system-site-packages so that bcc
# (python3-bpfcc) is importable; the project is installed editable with its test extras.
$(STAMP): pyproject.toml
	@./packaging/install-deps.sh
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

run: deps
	$(VENV)/bin/roguewatchd

test: deps
	$(PY) -m pytest -ra $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: deps
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (not timed tests): figures and bars in bench/README.md. BENCH_ARGS=--quick
# bench/peers.py compares roguewatch with auditd and bpftrace (installed here when missing;
# the bench stops auditd and deletes its rules after) and draws a chart with matplotlib.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: deps $(BENCH_STAMP)
	@for p in auditd bpftrace; do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || \
			missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
		case "$$missing" in *auditd*) systemctl disable --now auditd 2>/dev/null || true;; esac; \
	fi
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/evaluator_bench.py $(BENCH_ARGS)
	$(PY) bench/enforcement_bench.py $(BENCH_ARGS)
	$(PY) bench/restore_bench.py
	$(PY) bench/idle_bench.py
	$(PY) bench/fleet_bench.py $(BENCH_ARGS)
	$(PY) bench/failclosed_bench.py
	$(PY) bench/peers.py $(BENCH_ARGS)

# The attack corpus (a benchmark, not a test: bench/attacks/README.md), as root. E.g.
# ATTACKS_ARGS='--atomics /tmp/art/atomics --user rwagent --json bench/out/attacks.json'
attacks: deps
	@mkdir -p bench/out
	$(PY) bench/attacks/runner.py --json bench/out/attacks.json $(ATTACKS_ARGS)

docs: deps
	$(PY) -m roguewatch.stream.events --markdown > docs/events.md
	$(PY) -m roguewatch.detect.fields --update docs/rules.md

clean:
	rm -rf $(VENV) build dist *.egg-info daemon/*.egg-info

# Binary packages into dist/: roguewatch_<version>_<arch>.deb (and the .rpm when rpmbuild is
# installed); what they contain and how CI tests them: packaging/README.md.
.PHONY: package
package:
	./packaging/build.sh
