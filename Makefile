# Railyard: the two commands are `make run` and `make test`; each does all of its own set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-labelstudio lint protos docs bench bench-peers venv clean ui-vendor browser fuzz-api

# A real MLflow tracking server for the registry tests, in its own environment (it is an external system to
# Railyard, and its pins must not decide ours).
MLFLOW_VENV  := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed-stamp

$(STAMP): pyproject.toml client/pyproject.toml client/VERSION ml_backend/pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "Railyard needs Python 3.11; $(PYTHON) is %d.%d (set PYTHON=...)" % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ./client -e ./ml_backend -e '.[dev,embedded]'
	@touch $(STAMP)

venv: $(STAMP)

$(MLFLOW_STAMP):
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'mlflow>=3,<4' 'scikit-learn>=1.3'
	@touch $(MLFLOW_STAMP)

# The peers `make bench-peers` measures Railyard against, each in its own environment (as the MLflow server above):
# MLServer 1.7 with onnxruntime (bench/peers/mlserver_runtime.py; uvloop < 0.22: with 0.22+ MLServer 1.7's parallel
# workers fail to start, "no current event loop"), and mlflow with onnx for `mlflow models serve`.
PEER_MLSERVER_VENV  := .venv-bench-mlserver
PEER_MLSERVER_STAMP := $(PEER_MLSERVER_VENV)/.installed-stamp
PEER_MLFLOW_VENV    := .venv-bench-mlflow
PEER_MLFLOW_STAMP   := $(PEER_MLFLOW_VENV)/.installed-stamp

$(PEER_MLSERVER_STAMP):
	$(PYTHON) -m venv $(PEER_MLSERVER_VENV)
	$(PEER_MLSERVER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'mlserver>=1.7,<1.8' 'onnxruntime>=1.17' 'uvloop<0.22'
	@touch $(PEER_MLSERVER_STAMP)

$(PEER_MLFLOW_STAMP):
	$(PYTHON) -m venv $(PEER_MLFLOW_VENV)
	$(PEER_MLFLOW_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'mlflow>=3,<4' 'onnx>=1.14' 'onnxruntime>=1.17'
	@touch $(PEER_MLFLOW_STAMP)

# A real Label Studio for the ML backend SDK's test (railyard-ml), in its own environment for the same reason.
LS_VENV  := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-stamp

$(LS_STAMP):
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'label-studio==1.23.2'
	@touch $(LS_STAMP)

# schemathesis for `make fuzz-api`, in its own environment (a test tool with its own pins, never part of .venv).
FUZZ_VENV  := .venv-schemathesis
FUZZ_STAMP := $(FUZZ_VENV)/.installed-stamp

$(FUZZ_STAMP):
	$(PYTHON) -m venv $(FUZZ_VENV)
	$(FUZZ_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'schemathesis>=4.32,<5'
	@touch $(FUZZ_STAMP)

## A bounded property-based pass over the HTTP API (schemathesis on its own embedded stack, one worker, ~10 min;
## not part of `make test`): every 5xx is a finding. FUZZ_ARGS passes options, e.g. FUZZ_ARGS='--max-examples 5'.
## See docs/testing.md.
FUZZ_ARGS ?=
fuzz-api: venv $(FUZZ_STAMP)
	$(BIN)/python -m tests.fuzz_api $(FUZZ_ARGS)

## Start the embedded stack (NATS, PostgreSQL, S3 and every service) in the foreground.
run: venv
	$(BIN)/railyard up

## Debian's chromium and chromium-driver for the web UI's browser tests (tests/integration/test_ui.py): installed
## when missing and this runs as root with apt-get; otherwise nothing happens and those tests skip, saying why (or fail,
## with RAILYARD_TEST_REQUIRE_BROWSER=1: CI).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium and chromium-driver for the UI tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "could not install chromium: the UI tests will skip (fail with RAILYARD_TEST_REQUIRE_BROWSER=1, as in CI)"; \
	fi

## The whole test suite against real embedded servers (started by the tests themselves); -rs prints why a test
## skipped (e.g. the UI tests without a browser). TEST_WORKERS pytest-xdist workers, each with its own embedded
## stack, a test file staying on one worker; TEST_WORKERS=0 runs everything in one process.
## PYTHONDONTWRITEBYTECODE is emptied (a caller's setting would make every service, engine replica and `railyard`
## the suite starts compile Railyard's sources again, and pytest rewrite every test module again; docs/testing.md).
## In CI (CI=true, or .ci/run) RAILYARD_TEST_REQUIRE_BROWSER=1: no browser fails the UI tests instead of skipping them.
## Every run leaves its junit report in TEST_JUNIT, from which `python -m tests.file_seconds build/test-run.xml`
## refreshes the order the files are handed out in (tests/file_seconds.py); the run's output does too (its summary's
## `file seconds:` line, printed under xdist: not with TEST_WORKERS=0), so a saved log is enough once the clone is gone.
## RAILYARD_TEST_STACK_EARLY=1: each worker starts its embedded stack as its session starts, while it collects the
## suite, not when its first test asks for it (tests/conftest.py). RAILYARD_TEST_STACK_STOP_LATER=1: the session's stack
## is stopped and removed by a process of its own after the worker's last test, not waited for on the run's path.
## Three workers on 2 cores (session 43): two left the cores ~30 % idle while tests waited on timers and the stack
## (919 s against 735 s for the same clone; docs/testing.md).
TEST_WORKERS ?= 3
TEST_JUNIT ?= build/test-run.xml
RAILYARD_TEST_REQUIRE_BROWSER ?= $(if $(filter true,$(CI)),1,)
test: venv $(MLFLOW_STAMP) browser
	PYTHONDONTWRITEBYTECODE= RAILYARD_TEST_REQUIRE_BROWSER=$(RAILYARD_TEST_REQUIRE_BROWSER) RAILYARD_TEST_STACK_EARLY=1 \
		RAILYARD_TEST_STACK_STOP_LATER=1 RAILYARD_TEST_CLIENT_VENV_EARLY=1 RAILYARD_TEST_MLFLOW=$(CURDIR)/$(MLFLOW_VENV)/bin/mlflow $(BIN)/python -m pytest -q -rs \
		-p no:cacheprovider \
		-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 --junitxml=$(TEST_JUNIT)

## Label Studio 1.23.2 driving an ML backend served by railyard-ml (minutes of install and first start: own target).
test-labelstudio: venv $(LS_STAMP)
	RAILYARD_TEST_LABELSTUDIO=$(CURDIR)/$(LS_VENV)/bin/python $(BIN)/python -m pytest -q -p no:cacheprovider tests/labelstudio

lint: venv
	$(BIN)/ruff check .

## Regenerate protos/ (JSON Schema of every message, AsyncAPI of every service).
protos: venv
	$(BIN)/python -m shared.protos

## Regenerate docs/sdk.md (the SDK and CLI reference) from the client's code.
docs: venv
	$(BIN)/python -m railyard_client._docgen docs/sdk.md

## Every benchmark, into docs/benchmarks.md (`python -m bench logs assays`: those sections alone, in place).
bench: venv
	$(BIN)/python -m bench

## Railyard side by side with MLServer, mlflow and raw onnxruntime in one run (~15 min; BENCH_QUICK=1: ~4 min).
bench-peers: venv $(PEER_MLSERVER_STAMP) $(PEER_MLFLOW_STAMP)
	$(BIN)/python -m bench.peers

## Re-fetch the web UI's vendored browser libraries (Chart.js, Cytoscape.js) at the versions pinned in
## services/gateway/ui/package-lock.json, with their licences, into services/gateway/static/vendor/ (needs Node and
## the npm registry; the files are committed, so `make run` never needs Node).
UI_DIR     := services/gateway/ui
UI_VENDOR  := services/gateway/static/vendor
ui-vendor:
	cd $(UI_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	mkdir -p $(UI_VENDOR)
	sed '/^\/\/# sourceMappingURL=/d' $(UI_DIR)/node_modules/chart.js/dist/chart.umd.min.js > $(UI_VENDOR)/chart.umd.min.js
	cp $(UI_DIR)/node_modules/chart.js/LICENSE.md $(UI_VENDOR)/chart.js.LICENSE.md
	cp $(UI_DIR)/node_modules/@kurkle/color/LICENSE.md $(UI_VENDOR)/kurkle-color.LICENSE.md
	sed '/^\/\/# sourceMappingURL=/d' $(UI_DIR)/node_modules/cytoscape/dist/cytoscape.min.js > $(UI_VENDOR)/cytoscape.min.js
	cp $(UI_DIR)/node_modules/cytoscape/LICENSE $(UI_VENDOR)/cytoscape.LICENSE
	cp $(UI_DIR)/node_modules/@mdi/svg/LICENSE $(UI_VENDOR)/mdi-svg.LICENSE
	node $(UI_DIR)/icons.js
	cd $(UI_DIR) && node -e 'const l = require("./package-lock.json").packages; for (const n of ["chart.js", "@kurkle/color", "cytoscape", "@mdi/svg"]) { const p = l["node_modules/" + n]; console.log(n + " " + p.version + " " + p.integrity); }' > ../static/vendor/VERSIONS
	rm -rf $(UI_DIR)/node_modules

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) $(LS_VENV) $(PEER_MLSERVER_VENV) $(PEER_MLFLOW_VENV) $(FUZZ_VENV) .railyard
