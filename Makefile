# Two commands from nothing:  `make demo` (installs everything, then runs the demo) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup demo test test-fast clean lock image

LOCK    := -c constraints.txt -c requirements.lock

$(STAMP): pyproject.toml constraints.txt requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from the CPU build; the constraint keeps every later install from replacing it
	$(BIN)/python -m pip install --quiet $(LOCK) torch
	# runtime + train, eval, dev extras, every version pinned by the lock file (infra/lock.sh)
	$(BIN)/python -m pip install --quiet $(LOCK) -e '.[all]'
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps medspacy==1.3.1 PyRuSH==1.0.13 medspacy_quickumls==3.2
	$(BIN)/python -m infra.broker_binary --check
	# HAProxy: the fast REST ingress `argus serve` uses when present (installed when run as root on Debian)
	command -v haproxy >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; } \
	  || echo "haproxy not installed: argus serve will use Ray Serve's Python proxy"
	# Chromium: the headless browser tests/test_review_page.py drives through Playwright (Debian's package,
	# found on PATH; Playwright's own browser download is not used)
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium not installed: tests/test_review_page.py needs it (apt-get install chromium)"
	# wrk: the HTTP load generator benchmarks/rest_load.py drives (its asyncio fallback caps at ~200 RPS here)
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
	  || echo "wrk not installed: benchmarks/rest_load.py falls back to a slower Python client"
	# promtool (Debian's prometheus package): tests/test_observability.py checks the alert rules with it
	command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	  || echo "promtool not installed: tests/test_observability.py needs it (apt-get install prometheus)"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/argus demo

test: setup
	$(BIN)/lint-imports  # the layers contract (pyproject.toml [tool.importlinter])
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) var .pytest_cache

# after changing dependencies in pyproject.toml: re-pin the whole environment (uv, in the dev extra)
lock: setup
	UV=$(BIN)/uv infra/lock.sh

# the CPU container image, built here with buildah/podman and smoke-tested with `argus demo`
image:
	infra/production/build_image.sh
