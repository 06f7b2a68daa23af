# Two commands on a fresh machine: `make demo` and `make test`. Each does its own set-up
# (.venv/ with pinned dependencies, the ROS 2 interface and node packages built with colcon into
# install/), idempotently.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
IN_ROS_ENV := bash scripts/with_ros_env.sh

.PHONY: setup ros test lint demo bench clean

setup:
	@bash scripts/setup_venv.sh

ros: setup
	@bash scripts/build_ros.sh

lint: setup
	$(PYTHON) -m ruff check .

test: ros lint
	$(IN_ROS_ENV) $(PYTHON) -m pytest

demo: ros
	$(IN_ROS_ENV) $(PYTHON) -m kp2d_ros.demo

bench: ros
	$(IN_ROS_ENV) bash benchmarks/run_all.sh

clean:
	rm -rf build install log .pytest_cache .ruff_cache
