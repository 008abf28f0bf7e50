#!/usr/bin/env bash
# On the lent GPU host, one call: the kernel sweep on the issue's rows and 500 random shapes, the same rows with the
# launch before the fix (unequal head blocks), then the paper's AA-ResNet-50 beside torchvision's (eager).
#   bash benchmarks/gpu_correctness.sh      (results under $OUT, else ./gpu-correctness)
set -uo pipefail
out=${OUT:-gpu-correctness}; mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
echo "=== issue rows"
timeout 140 python3 benchmarks/kernel_sweep.py --cases issue --workers 14 --out "$out/issue.jsonl" > "$out/issue.txt" 2>&1
grep -E "^FAIL|passed|^#" "$out/issue.txt" | cut -c1-300
echo "=== 500 random shapes"
timeout ${SWEEP_S:-230} python3 benchmarks/kernel_sweep.py --cases random --shapes 500 --workers 14 --out "$out/sweep.jsonl" \
  > "$out/sweep.txt" 2>&1
grep -E "^FAIL|passed|^#" "$out/sweep.txt" | cut -c1-300; wc -l < "$out/sweep.jsonl"
echo "=== issue rows, launch before the fix"
timeout 100 python3 benchmarks/kernel_sweep.py --cases issue --workers 14 --variant unequal_blocks > "$out/issue-before.txt" 2>&1
grep -E "^FAIL|passed" "$out/issue-before.txt" | cut -c1-200
echo "=== paper AA-ResNet-50, eager"
timeout 90 python3 benchmarks/resnet.py --paper --batch 128 --impls triton 2>&1 | tee "$out/resnet-paper.md" | tail -8
