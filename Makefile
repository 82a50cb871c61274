# Two commands a newcomer needs. Both set up .venv (torch, deps, a real ComfyUI runtime) on first use.
PY := .venv/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-device setup parity bench

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# Only the tests on the stand-in accelerator (tests/stand_in_device.py): same as `make test PYTEST_ARGS='-m device'`.
test-device: setup
	$(PY) -m pytest -q tests -m device $(PYTEST_ARGS)

parity: setup
	$(PY) tools/parity.py ../shared/reference/golden/*.json ../shared/reference/manifest/*.json
