# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint promtool bench-quality bench-throughput clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	# The pinned CPU build first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recstream demo $(ARGS)

test: $(STAMP) promtool
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# tests of Kafka behaviour mostly wait on brokers and workers: two at a time (pytest-xdist),
	# a module's tests together (its fixtures are built once)
	$(BIN)/python -m pytest -n 2 --dist loadscope $(ARGS)

# The metrics tests check the worker's /metrics and deploy/'s rules with promtool
# (Debian's prometheus package): installed here when we may, otherwise a clear stop.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing promtool (Debian package prometheus)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "make test needs promtool: install Debian's 'prometheus' package" \
	      "(apt-get install prometheus) or put promtool on PATH" >&2; exit 1; \
	  fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-quality: $(STAMP)
	$(BIN)/recstream bench quality --source sim --report bench-quality.json --plot bench-quality.png

bench-throughput: $(STAMP)
	$(BIN)/recstream bench throughput --report bench-throughput.json --plot bench-throughput.png

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
