#!/usr/bin/env bash
# The quickstart gpu study on one GPU through `aa-study run --mps` (the trials' kernels run side by side instead of
# time-sliced between processes): wall, GPU busy, and each trial's val_top1 (to compare with a launch without
# --mps: the same cell and seed must give the same number). On the GPU host, after
# `source scripts/gpu-host-env.sh`:   bash benchmarks/mps_packing.sh [GPU_SHARE ...]   (default: the study's 0.16)
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export CUDA_VISIBLE_DEVICES=0
for share in ${@:-0.16}; do
  export AA_STUDY_HOME=$(mktemp -d)
  python3 - "$OUT" "$share" <<'PY'
import sys, yaml
s = yaml.safe_load(open("studies/quickstart.yaml"))
s["profiles"]["gpu"]["resources"]["gpu"] = float(sys.argv[2])
yaml.safe_dump(s, open(f"{sys.argv[1]}/share-{sys.argv[2]}.yaml", "w"))
PY
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -i 0 -l 1 > "$OUT/util-mps-$share.txt" & p=$!
  s=$(date +%s.%N)
  python3 -m aa_study.cli run "$OUT/share-$share.yaml" --profile gpu --quiet --mps > "$OUT/study-mps-$share.log" 2>&1
  wall=$(python3 -c "print(round($(date +%s.%N) - $s, 1))"); kill $p
  echo "| quickstart gpu, --mps, share $share ($(python3 -c "print(int(1 / $share + 1e-9))") at a time) | wall $wall s | GPU busy $(awk '{s+=$1; n++} END {printf "%.1f", s/n}' "$OUT/util-mps-$share.txt") % |"
  grep -h "^finished" "$OUT/study-mps-$share.log" | sed 's/ (.*//' | sort > "$OUT/values-mps-$share.txt"
done
pgrep -fa nvidia-cuda-mps || echo "no MPS daemon left running"
