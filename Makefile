# The README's two commands: `make quickstart` and `make test`. Each builds what it needs.
PYTHON ?= python3
VENV := .venv
VENV_NT := .venv-nt
WORKDIR ?= workdirs
# Two pytest workers: one per core on the 2-core CI machine. worksteal: an idle worker takes
# queued tests from the busy one, so the minute-long end-to-end runs do not leave one core
# idle at the end (8:39 -> 6:53 for the main environment here).
PYTEST_WORKERS ?= 2
PYTEST_DIST := -n $(PYTEST_WORKERS) --dist worksteal

.PHONY: quickstart test test-main test-nt test-nt-all bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test,plot,data]'
	touch $@

# neural-tangents only imports on jax <= 0.5.3: a pinned second environment. Its pins
# (tensorflow-cpu is most of it) install first, apart from dv_jax, so that `make test` can
# install them while the main environment installs: each pip keeps one core busy.
$(VENV_NT)/.pinned: requirements-nt.txt
	$(PYTHON) -m venv $(VENV_NT)
	$(VENV_NT)/bin/pip install -r requirements-nt.txt
	touch $@

$(VENV_NT)/.installed: setup.py requirements-nt.txt $(VENV_NT)/.pinned
	$(VENV_NT)/bin/pip install -r requirements-nt.txt -e '.[test,plot,data]'
	touch $@

# The CPU versions of the paper's headline figure and tables (about 6 minutes on 2 cores).
quickstart: $(VENV)/.installed
	$(VENV)/bin/python experiments/lemma1_theory.py --config=configs/lemma1_theory.py --workdir=$(WORKDIR)/lemma1_theory
	$(VENV)/bin/python experiments/three_phase_scaling.py --config=configs/three_phase_scaling.py:facts --workdir=$(WORKDIR)/three_phase_facts
	$(VENV)/bin/python experiments/valuation_table.py --config=configs/valuation_table.py:digits --workdir=$(WORKDIR)/valuation_digits
	$(VENV)/bin/python experiments/ablation.py --config=configs/ablation.py:digits --workdir=$(WORKDIR)/ablation_digits
	@echo
	@echo "Outputs (config.json, results.json, CSV tables, figures as PNG and PDF; table.md for the valuation runs):"
	@for d in lemma1_theory three_phase_facts valuation_digits ablation_digits; do echo "  $(WORKDIR)/$$d/"; done

# Both environments' heavy installs at once (the second one's pins never touch this
# checkout, where the editable installs write dv_jax.egg-info), then one suite after the other.
test:
	$(MAKE) -j2 --output-sync=target $(VENV)/.installed $(VENV_NT)/.pinned
	$(MAKE) test-main
	$(MAKE) test-nt

test-main: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_DIST) tests

# The second environment checks that the library runs on jax 0.5.3 and agrees with
# neural-tangents: every test except those marked slow (the end-to-end experiment runs and
# a config-wiring check), which drive the same library code and would double make test's
# time. test-nt-all runs them too.
test-nt: $(VENV_NT)/.installed
	DV_JAX_REQUIRE_NT=1 $(VENV_NT)/bin/python -m pytest $(PYTEST_DIST) -m 'not slow' tests

test-nt-all: $(VENV_NT)/.installed
	DV_JAX_REQUIRE_NT=1 $(VENV_NT)/bin/python -m pytest $(PYTEST_DIST) tests

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) $(VENV_NT) $(WORKDIR) *.egg-info
