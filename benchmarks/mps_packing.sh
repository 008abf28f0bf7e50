#!/usr/bin/env bash
# The quickstart gpu study on one GPU with CUDA MPS (trials' kernels run concurrently instead of time-sliced
# between processes): wall, GPU busy, and each trial's val_top1 (to compare with a run without MPS: the same cell
# and seed must give the same number). On the GPU host, after `source scripts/gpu-host-env.sh`:
#   bash benchmarks/mps_packing.sh [GPU_SHARE]      (default: the study's own, 0.16)
# It starts an MPS control daemon of its own (pipe and log folders under a temporary folder) and stops it at the end.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export AA_STUDY_HOME=$(mktemp -d)
spec=studies/quickstart.yaml
if [ -n "${1:-}" ]; then
  python3 - "$OUT" "$1" <<'PY'
import sys, yaml
s = yaml.safe_load(open("studies/quickstart.yaml"))
s["profiles"]["gpu"]["resources"]["gpu"] = float(sys.argv[2])
yaml.safe_dump(s, open(f"{sys.argv[1]}/share.yaml", "w"))
PY
  spec=$OUT/share.yaml
fi
mps=$(mktemp -d)
export CUDA_VISIBLE_DEVICES=0 CUDA_MPS_PIPE_DIRECTORY=$mps/pipe CUDA_MPS_LOG_DIRECTORY=$mps/log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d
trap 'echo quit | nvidia-cuda-mps-control || true' EXIT
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -i 0 -l 1 > "$OUT/util-mps.txt" & p=$!
s=$(date +%s.%N)
python3 -m aa_study.cli run "$spec" --profile gpu --quiet > "$OUT/study-mps.log" 2>&1
wall=$(python3 -c "print(round($(date +%s.%N) - $s, 1))"); kill $p
echo "| quickstart gpu with MPS (share ${1:-0.16}) | wall $wall s | GPU busy $(awk '{s+=$1; n++} END {printf "%.1f", s/n}' "$OUT/util-mps.txt") % |"
grep -h "^finished" "$OUT/study-mps.log" | sed 's/ (.*//' | sort
