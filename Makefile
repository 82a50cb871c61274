# Two commands a newcomer needs. Both set up .venv (torch, deps, a real ComfyUI runtime) on first use.
# SONIC_VENV picks another venv (another torch: README "Compatibility"); setup and the tests read it too.
export SONIC_VENV ?= .venv
PY := $(SONIC_VENV)/bin/python
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-device setup parity bench gpu-check-prepare gpu-check

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
	$(PY) tools/parity.py reference/golden/*.json reference/manifest/*.json

# GPU acceptance run (README "GPU runs"): pack here what the offline GPU machine lacks, then run there in one call.
gpu-check-prepare: setup
	$(PY) tools/gpu_check_pack.py

# On the GPU machine there is no .venv: its own python3 runs the check (and a dry run at tiny size without CUDA).
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) tools/gpu_check.py $(GPU_CHECK_ARGS)
