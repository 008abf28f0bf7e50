#!/usr/bin/env bash
# Run (or continue) gpu-profile studies (PROFILE=NAME for another profile) on the lent GPU host exactly as a user would, bringing the MLflow
# store back. Usage (on the GPU host, from the repo root): bash benchmarks/gpu_proxy.sh SECONDS STUDY...
# A study cut off by SECONDS is continued by the next call (`aa-study resume` semantics: what FINISHED is
# kept; unfinished trials start again, their checkpoints stayed on the previous machine).
set -uo pipefail
spec_of() { if [ -f "$1" ]; then echo "$1"; else echo "studies/$1.yaml"; fi; }  # a path, or a name under studies/
budget=$1; shift
source scripts/gpu-host-env.sh
# a warm machine keeps its newer store (and the Ray checkpoints); a fresh one starts from the carried store
mkdir -p /tmp/runs && [ ! -f /tmp/runs/mlflow.db ] && [ -f .store/store.tar ] && tar -C /tmp/runs -xf .store/store.tar
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > "$OUT/util.txt" &
sampler=$!
end=$(( $(date +%s) + budget ))
for study in "$@"; do
  spec=$(spec_of "$study")
  left=$(( end - $(date +%s) ))
  [ "$left" -gt 30 ] || break
  echo "== $study ($left s left)"
  /usr/bin/time -f "$study wall %e s" timeout -s INT -k 20 "$left" python3 -m aa_study.cli run "$spec" --profile ${PROFILE:-gpu} --quiet 2>&1 \
    | grep -v "Warning\|warn(" | grep "^done\|^study\|wall\|FAILED\|rror" 
done
kill $sampler
for study in "$@"; do
  python3 -m aa_study.cli status "$(spec_of "$study")" --profile ${PROFILE:-gpu}
done
tar -C /tmp/runs -cf "$OUT/store.tar" mlflow.db artifacts
