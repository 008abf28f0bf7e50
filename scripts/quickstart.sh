#!/usr/bin/env bash
# Set everything up and run the main job. Until the study runner lands (issue 4), the main job is one
# trial on the synthetic relative-position task on the CPU, through `aa-study train`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
aa-study train --arch aa_resnet18 --kappa 0.25 --num-heads 2 --pos-enc relative --dataset synthetic \
  --data task=relative_position --data image_size=16 --data train_samples=2048 --data val_samples=512 \
  --epochs 2 --batch-size 64 --device cpu
