#!/usr/bin/env bash
# Set everything up and run the main job: the quickstart study (studies/quickstart.yaml, cpu profile) on a
# local Ray with an embedded sqlite MLflow store under ./aa-study-runs, then its report.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
aa-study run studies/quickstart.yaml --profile cpu
aa-study report studies/quickstart.yaml --profile cpu
echo "Report: aa-study-runs/reports/quickstart-cpu/report.md (and index.html). Browse the runs: aa-study ui studies/quickstart.yaml"
