PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo clean

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest tests -q -m slow

# The `all` workflow of project.yml with its defaults (conll03 news text, minilm; ~30 min on 2 CPU cores):
# fetch -> convert -> train -> evaluate -> package -> install -> smoke. Finished steps are skipped
# on a second run. Offline: BOND_MOE_DATA_MIRROR=../shared/datasets make demo
DEMO_METRICS := metrics/conll03-minilm.json

demo: export HF_HUB_OFFLINE = 1
demo: $(STAMP)
	$(PY) -m weasel run all
	@echo "== $(DEMO_METRICS)"
	@$(PY) -c 'import json, sys; m = json.load(open(sys.argv[1])); print("split {split}: P {ents_p:.4f}  R {ents_r:.4f}  F {ents_f:.4f}".format(**m))' $(DEMO_METRICS)
	@echo "== smoke test"
	$(PY) -m weasel run smoke

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
