#!/usr/bin/env bash
# On the lent GPU host: the relative-attention kernel's correctness, determinism and speed, in one call.
#   bash benchmarks/gpu_kernel.sh [attention|explore|compile|train|all]   (results under $OUT, else ./gpu-kernel-results)
set -uo pipefail
out=${OUT:-gpu-kernel-results}; mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv | tee "$out/gpu.txt"
if [ "$what" = attention ] || [ "$what" = all ]; then
  python3 benchmarks/determinism.py 2>&1 | tee "$out/determinism.md"
  python3 benchmarks/attention.py --sizes 7 14 28 56 2>&1 | tee "$out/attention.md"
  python3 benchmarks/resnet.py --batch 128 2>&1 | tee "$out/resnet.md"
  python3 benchmarks/profile_step.py --batch 128 2>&1 | tee "$out/profile-step.txt"
fi
if [ "$what" = explore ] || [ "$what" = all ]; then
  python3 benchmarks/attention.py --sizes 28 56 --explore 2>&1 | tee "$out/attention-explore.md"
fi
if [ "$what" = compile ] || [ "$what" = all ]; then
  python3 benchmarks/resnet.py --batch 128 --compile --impls triton 2>&1 | tee "$out/resnet-compile.md"
fi
if [ "$what" = train ] || [ "$what" = all ]; then
  # the quickstart gpu cell kappa=upsilon=0.5, N_h=4, relative, seed 0: twice alone, once beside a busy process
  cat > /tmp/cell.yaml <<'YAML'
arch: aa_resnet18
kappa: 0.5
upsilon: 0.5
num_heads: 4
pos_enc: relative
stages: [3, 4]
small_input: true
dataset: synthetic
data: {task: same_corners, image_size: 64, train_samples: 8192, val_samples: 4096}
epochs: 24
batch_size: 256
grad_clip: 1.0
optim: {base_lr: 0.03}
seed: 0
device: auto
YAML
  for run in alone-1 alone-2; do
    /usr/bin/time -f "$run wall %e s" python3 -m aa_study.cli train --config /tmp/cell.yaml 2>&1 | tail -30 | tee "$out/train-$run.json"
  done
  python3 -c "$(sed -n '/^BUSY = """/,/^"""/p' benchmarks/determinism.py | sed '1d;$d' | sed 's/{seconds}/3600/')" &
  busy=$!; sleep 12
  /usr/bin/time -f "busy wall %e s" python3 -m aa_study.cli train --config /tmp/cell.yaml 2>&1 | tail -30 | tee "$out/train-busy.json"
  kill $busy
fi
