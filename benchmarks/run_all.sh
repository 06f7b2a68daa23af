#!/usr/bin/env bash
# Run every benchmark (`make bench`); each writes its JSON under benchmarks/results/ and prints a table.
# Run inside the ROS environment (scripts/with_ros_env.sh) for the node benchmark. Takes tens of minutes on
# a 2-core CPU; run it on an otherwise idle machine and compare ratios measured within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
$python benchmarks/bench_inference.py
$python benchmarks/bench_layer_rates.py
$python benchmarks/bench_evaluation.py --json benchmarks/results/evaluation.json
$python benchmarks/bench_training.py
$python benchmarks/bench_node.py
$python benchmarks/bench_transport.py
