# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install what is missing (Python and Debian packages).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Re-install when the dependency list or the set of top-level packages changes (the
# editable install maps the packages that exist when it runs).
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; ls -d */__init__.py) | md5sum | cut -c1-12)
# Headless MuJoCo rendering: EGL (default) and OSMesa (fallback); docker-compose (Debian's
# v1, no engine needed) validates docker-compose.yml in the tests; redis-server and haproxy
# run the fleet on loopback (tests/scale, server/deploy/local.py).
APT_PACKAGES := libegl1 libopengl0 libgl1-mesa-dri libosmesa6 docker-compose redis-server haproxy
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

.PHONY: test demo lgssm lint system-deps install bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing Debian packages:$$missing (headless MuJoCo rendering, compose"; \
	    echo "         validation, the fleet on loopback); run as root: apt-get install$$missing"; \
	    echo "         -- rendering tests fail, the compose and fleet tests are skipped without them"; \
	  fi; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check .

# pytest exit code 5 means "no tests collected": that must fail, not pass.
test: install
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

# Train a small model on a fusion task (or reuse runs/demo/bundle), export it, serve it on
# 127.0.0.1, run the robot-sim through it with camera latency, stop the service, summarise.
demo: install
	PY=$(PY) DEMO_OUT=$(DEMO_OUT) bash scripts/demo.sh

# The paper's toy experiment (Section 2.2), quick mode.
lgssm: install
	$(PY) -m training.lgssm --quick --out runs/lgssm-quick

bench: install
	$(PY) bench/kalman.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
