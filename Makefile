# Two commands on a fresh machine: `make demo` and `make test`. Each does its own set-up
# (.venv/ with pinned dependencies, the ROS 2 interface and node packages built with colcon into
# install/), idempotently.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
IN_ROS_ENV := bash scripts/with_ros_env.sh

.PHONY: setup ros test lint demo bench clean test-suite test-isa test-jazzy test-humble test-workspace

setup:
	@bash scripts/setup_venv.sh

ros: setup
	@bash scripts/build_ros.sh

lint: setup
	$(PYTHON) -m ruff check .

# The suite, then the portability steps (scripts/test_*.sh; README "Two commands"), one header each.
test: ros lint
	@$(MAKE) --no-print-directory test-suite test-isa test-jazzy test-humble test-workspace

test-suite: ros
	@echo "=== make test-suite: all tests on the pinned stack ==="
	KP2D_REQUIRE_FIXTURES=1 $(IN_ROS_ENV) $(PYTHON) -m pytest

test-isa: setup
	@echo "=== make test-isa: fidelity tests on other CPU kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) ==="
	@bash scripts/test_isa.sh

test-jazzy: setup
	@echo "=== make test-jazzy: the suite on Ubuntu 24.04's Python stack (Python 3.12, NumPy 1.26.4, OpenCV 4.6.0) ==="
	@bash scripts/test_ubuntu_stack.sh jazzy

test-humble: setup
	@echo "=== make test-humble: the suite on Ubuntu 22.04's Python stack (Python 3.10, NumPy 1.21.5, OpenCV 4.5.4) ==="
	@bash scripts/test_ubuntu_stack.sh humble

test-workspace: setup
	@echo "=== make test-workspace: colcon build + colcon test in a workspace from git archive HEAD ==="
	@bash scripts/test_workspace.sh

demo: ros
	$(IN_ROS_ENV) $(PYTHON) -m kp2d_ros.demo

bench: ros
	$(IN_ROS_ENV) bash benchmarks/run_all.sh

clean:
	rm -rf build install log .pytest_cache .ruff_cache
