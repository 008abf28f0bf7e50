#!/usr/bin/env bash
# One paper-profile trial (AA-ResNet-50, relative, kappa = upsilon = 0.25, N_h 8, stages 2-4) on one GPU and with DDP
# over every GPU of the host, through `aa-study run` as a user would (resources.workers), on a generated
# ImageNet-like JPEG tree with the GPU input path (decode: gpu):
#   bash benchmarks/ddp_scaling.sh [IMAGES] [EPOCHS]       (after `source scripts/gpu-host-env.sh` on the GPU host)
# Per-GPU batch 128 in both runs (global 128 x workers), learning rate following the global batch, and the same
# number of steps per epoch (STEPS, default 40), so each run's per-epoch costs weigh the same. Prints images/s of
# the last epoch's training steps, per GPU, and the scaling efficiency. SMOKE=1: a CPU-sized version (gloo workers, 64 px,
# AA-ResNet-18) that checks the plumbing on a machine without GPUs. POS_ENC=none: the content-only cell.
set -euo pipefail
N=${1:-6000}; EPOCHS=${2:-3}
ROOT=${JPEG_ROOT:-/tmp/aa-jpegs}
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
[ -d "$ROOT/train" ] || python3 benchmarks/jpeg_loader.py --make "$ROOT" --images "$N"
DIR=$(mktemp -d); SPEC=$DIR/ddp.yaml; STORE=sqlite:///$DIR/mlflow.db; LOGS=${OUT:-$DIR}
if [ "${SMOKE:-0}" = 1 ]; then
  MAX=2; ARCH="arch: [aa_resnet18]"; TRAIN="image_size: 64, augment: none, decode: cpu, num_workers: 0"
  NET="small_input: true"; RES="cpu: 0.5, gpu: 0"; DEV=cpu; B=16
else
  MAX=$GPUS; ARCH="arch: [aa_resnet50]"; TRAIN="image_size: 224, augment: imagenet, decode: gpu, num_workers: 8"
  NET="small_input: false"; RES="cpu: 10, gpu: 1"; DEV=cuda; B=128
fi
cat > "$SPEC" <<EOF
name: ddp-scaling
grid: {$ARCH, kappa: [0.25], upsilon: kappa, num_heads: [8], pos_enc: [${POS_ENC:-relative}]}
seeds: 1
train:
  dataset: imagefolder
  data: {root: $ROOT, resident: false, $TRAIN}
  epochs: $EPOCHS
  batch_size: $B
  limit_train_batches: ${STEPS:-40}
  recipe: imagenet
  optim: {base_lr: 0.02}  # a short run has only a few warm-up steps: a lower rate and clipping keep it finite
  grad_clip: 1.0
  zero_init_residual: true  # the paper profiles' init: without it ResNet-50 at 224 px diverged within 10 steps
  stages: [2, 3, 4]
  $NET
  device: $DEV
resources: {$RES, workers: 1}
profiles:
  w1: {}
  w$MAX: {resources: {$RES, workers: $MAX}, train: {batch_size: $((B * MAX))}}
EOF
for W in 1 "$MAX"; do
  s=$(date +%s.%N)
  python3 -m aa_study.cli run "$SPEC" --profile "w$W" --tracking-uri "$STORE" --storage "$DIR/ray" \
    > "$LOGS/ddp-w$W.log" 2>&1 || { tail -40 "$LOGS/ddp-w$W.log"; exit 1; }
  echo "w$W $(python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')")" | tee -a "$DIR/wall.txt"
done
python3 - "$STORE" "$MAX" "$DIR/wall.txt" <<'EOF'
import sys
from mlflow.tracking import MlflowClient
store, most, wall = sys.argv[1], int(sys.argv[2]), dict(l.split() for l in open(sys.argv[3]))
c = MlflowClient(store)
rate = {}
for w in (1, most):
    exp = c.get_experiment_by_name(f"ddp-scaling-w{w}")
    (run,) = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "trial"]
    assert run.info.status == "FINISHED" and run.data.tags["workers"] == str(w), run.info
    hist = sorted(c.get_metric_history(run.info.run_id, "images_per_s"), key=lambda m: m.step)
    rate[w] = hist[-1].value
    steps = "epochs " + ", ".join(f"{m.value:.0f}" for m in hist)
    print(f"| {w} | {rate[w]:.0f} | {rate[w] / w:.0f} | {run.data.metrics.get('val_top1', float('nan')) * 100:.1f} "
          f"| {wall[f'w{w}']} | {steps} |")
print(f"\nscaling efficiency ({most} workers, per-GPU images/s of the last epoch vs one): "
      f"{rate[most] / most / rate[1] * 100:.1f} %")
EOF
