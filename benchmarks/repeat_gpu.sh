#!/usr/bin/env bash
# Same cell, same seed, same result on the GPU (the repeatability contract), and the quickstart gpu study spread
# over the host's GPUs. On the GPU host, after `source scripts/gpu-host-env.sh`:
#   GPUS=all bash benchmarks/repeat_gpu.sh    # the study packed over every GPU (fractional GPUs per trial)
#   GPUS=0   bash benchmarks/repeat_gpu.sh    # the same study packed on GPU 0 only
#   GPU_FRACTION=0.2 GPUS=all bash ...        # the same with another GPU share per trial
#   FITS=1 bash benchmarks/repeat_gpu.sh      # the κ=υ=0.5 relative cell, seed 0, through `aa-study train`: alone,
#                                             # alone with --no-deterministic, and beside a process looping matmuls
# Each writes under $OUT: per-trial metrics (exact float reprs) as CSV, wall seconds, GPU utilisation samples.
# benchmarks/repeat_compare.py puts them side by side.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
if [ "${FITS:-0}" = 1 ]; then
  python3 - > "$OUT/cell.yaml" <<'PY'
import yaml
from pipelines.spec import load_study
s = load_study("studies/quickstart.yaml", "gpu")
(t,) = [t for t in s.trials if t.config["kappa"] == 0.5 and t.config["pos_enc"] == "relative" and t.seed == 0]
print(yaml.safe_dump({k: v for k, v in t.config.items() if k != "deterministic"}))
PY
  fit() { s=$(date +%s.%N); python3 -m aa_study.cli train --config "$OUT/cell.yaml" "$@" 2>"$OUT/fit-$1.err" \
    | python3 -c "import json,sys; m=json.load(sys.stdin); print(json.dumps({k: m[k] for k in ('val_loss','val_top1','train_loss')}))"
    echo "wall $(python3 -c "print(round($(date +%s.%N) - $s, 1))")"; }
  echo "alone, deterministic (1): $(fit --deterministic)"
  echo "alone, deterministic (2): $(fit --deterministic)"
  echo "alone, --no-deterministic: $(fit --no-deterministic)"
  python3 -c "
import time, torch
a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)
end = time.time() + 600
while time.time() < end:
    for _ in range(20): a @ a
    torch.cuda.synchronize()" & busy=$!
  sleep 5
  echo "beside a busy process, deterministic: $(fit --deterministic)"
  kill $busy
  exit 0
fi
TAG=gpus-${GPUS:-all}
[ "${GPUS:-all}" = all ] || export CUDA_VISIBLE_DEVICES=$GPUS
export AA_STUDY_HOME=$(mktemp -d)
SPEC=studies/quickstart.yaml
if [ -n "${GPU_FRACTION:-}" ]; then  # the same study with another GPU share per trial (how Ray packs the GPUs)
  TAG=$TAG-frac$GPU_FRACTION; SPEC=$OUT/quickstart-frac.yaml
  python3 -c "import yaml,sys; s=yaml.safe_load(open('studies/quickstart.yaml')); s['profiles']['gpu']['resources']['gpu']=float(sys.argv[1]); yaml.safe_dump(s, open(sys.argv[2], 'w'))" "$GPU_FRACTION" "$SPEC"
fi
nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits -l 1 > "$OUT/$TAG-util.txt" &
sampler=$!
s=$(date +%s.%N)
python3 -m aa_study.cli run "$SPEC" --profile gpu > "$OUT/$TAG.log" 2>&1 || { tail -30 "$OUT/$TAG.log"; exit 1; }
wall=$(python3 -c "print(round($(date +%s.%N) - $s, 1))")
kill $sampler
python3 - "$OUT/$TAG.csv" "$wall" <<'PY'
import csv, sys
from mlflow.tracking import MlflowClient
from pipelines.tracking import default_tracking_uri
c = MlflowClient(default_tracking_uri())
exp = c.get_experiment_by_name("quickstart-gpu")
rows = []
for r in c.search_runs([exp.experiment_id], max_results=1000):
    t, p, m = r.data.tags, r.data.params, r.data.metrics
    if t.get("kind") != "trial":
        continue
    rows.append([t["cell"], t["seed"], p["kappa"], p["pos_enc"], p.get("deterministic", ""), r.info.status,
                 repr(m.get("val_loss")), repr(m.get("val_top1")), t.get("node_id", "")])
rows.sort()
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["cell", "seed", "kappa", "pos_enc", "deterministic", "status", "val_loss", "val_top1", "node"])
    w.writerows(rows)
print(f"{len(rows)} trials, wall {sys.argv[2]} s, {len(rows) / float(sys.argv[2]) * 3600:.1f} trials/hour")
for r in rows:
    print(r)
PY
echo "wall $wall" > "$OUT/$TAG-wall.txt"
