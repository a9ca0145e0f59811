# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= demo_out

.PHONY: install demo test bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Install torch==$(TORCH_VERSION) (CPU build on this platform) only when torch is absent,
# so a user's own (e.g. CUDA) torch is left alone; then the package with its test extras.
$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/mmhvae demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q --timeout=900

bench: install
	$(PY) benchmarks/compute.py --preset paper

clean:
	rm -rf $(VENV) $(DEMO_OUT) build src/*.egg-info
