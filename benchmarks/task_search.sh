#!/usr/bin/env bash
# Many fits of benchmarks/fit_curve.py at once on the lent GPU host, one per line of a matrix file
# ("NAME fit_curve.py flags"; # comments), each log in $OUT/NAME.log; the final val top-1 of each at the end.
# Usage (GPU host, repo root): bash benchmarks/task_search.sh SECONDS MATRIX
set -uo pipefail
budget=$1; matrix=$2
source scripts/gpu-host-env.sh
export OMP_NUM_THREADS=1
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 2 > "$OUT/util.txt" &
sampler=$!; pids=()
while read -r name flags; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  # shellcheck disable=SC2086
  timeout -s INT "$budget" python3 benchmarks/fit_curve.py "$name" $flags 2>&1 | grep "epoch\|FINAL\|rror" > "$OUT/$name.log" &
  pids+=($!)
done < "$matrix"
wait "${pids[@]}"; kill $sampler
grep -h FINAL "$OUT"/*.log | sort
awk -F, '{s += $1; n++} END {if (n) printf "GPU busy (nvidia-smi, 2 s samples): %.0f%%\n", s / n}' "$OUT/util.txt"
