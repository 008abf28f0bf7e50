#!/usr/bin/env bash
# Study throughput (packed vs one at a time) and Ray Tune + MLflow overhead (run vs train), on a GPU host:
#   bash benchmarks/study_overhead.sh    (after `source scripts/gpu-host-env.sh` where Ray/MLflow are missing)
set -uo pipefail
log=${OUT:-/tmp}/overhead-partial.txt  # each number as soon as it is measured (a cut-off run keeps them)
spec=benchmarks/studies/packing.yaml
t() { local s=$(date +%s.%N); "$@" > /tmp/last.log 2>&1; python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')"; }
r() { python3 -c "print(f'{$1 / $2:.2f}')"; }
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > /tmp/util-packed.txt & s=$!
packed=$(t python3 -m aa_study.cli run $spec --profile packed --quiet); kill $s; echo "packed $packed" >> $log
serial=$(t python3 -m aa_study.cli run $spec --profile serial --quiet); echo "serial $serial" >> $log
single=$(t python3 -m aa_study.cli run $spec --profile single --quiet); echo "single $single" >> $log
train=$(t python3 -m aa_study.cli train --arch aa_resnet18 --kappa 0.5 --num-heads 4 --pos-enc relative --stages 3 4 \
  --dataset synthetic --data task=same_corners --data image_size=64 --data train_samples=8192 --data val_samples=2048 \
  --epochs 3 --batch-size 256 --lr 0.03 --seed 0); echo "train $train" >> $log
busy=$(awk '{s+=$1; n++} END {printf "%.0f", s/n}' /tmp/util-packed.txt)
cat <<TABLE
| measurement | seconds | ratio |
|---|---|---|
| 8 trials packed (8 x 1/8 GPU), wall | $packed | $(r $serial $packed)x trials/hour vs one at a time |
| 8 trials one at a time (1 GPU each), wall | $serial | 1.00x |
| GPU busy during the packed study (nvidia-smi, 1 s) | mean $busy% | |
| 1 trial through aa-study run (Ray + MLflow), wall | $single | $(r $single $train)x of train |
| the same fit through aa-study train, wall | $train | 1.00x |
TABLE
