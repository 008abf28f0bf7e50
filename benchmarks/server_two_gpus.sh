#!/usr/bin/env bash
# Issue 18's spread over GPUs with the study server, on a host with two GPUs (after `source scripts/gpu-host-env.sh`):
# the quickstart gpu study (9 trials, `resources.gpu` 0.16) through `aa-study serve --mps` with one GPU visible, then
# with two (the launch spreads them 5 + 4); each GPU's busy fraction, the ratio of the rates, and each trial's top-1
# compared. SEEDS=N: the same study with N seeds (3 x N trials), where the trial count does not cap the ratio below 2
# (9 trials: 5 + 4, at most 9/5 = 1.8x). Usage: [SEEDS=N] bash benchmarks/server_two_gpus.sh
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
W=$(mktemp -d)  # servers' logs, samples, wall times: the GPU host returns a limited number of files from $OUT
source "$(dirname "$0")/gpu_sampling.sh"
STUDY=studies/quickstart.yaml
if [ -n "${SEEDS:-}" ]; then
  STUDY=$W/study.yaml
  python3 -c "
import yaml; s = yaml.safe_load(open('studies/quickstart.yaml'))
s['name'] = 'quickstart-seeds$SEEDS'; s['profiles']['gpu']['seeds'] = $SEEDS
yaml.safe_dump(s, open('$STUDY', 'w'))"
fi
CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli train --config <(python3 -c "
import yaml; from pipelines.spec import load_study
print(yaml.safe_dump(dict([t for t in load_study('studies/quickstart.yaml', 'gpu').trials
                          if t.config['pos_enc'] == 'relative'][0].config)))") --epochs 1 > /dev/null 2>&1
for gpus in 0 0,1; do
  g=${gpus//,/-}  # file names without commas (the GPU host does not return those)
  export CUDA_VISIBLE_DEVICES=$gpus AA_STUDY_HOME=$(mktemp -d)
  python3 -m aa_study.cli serve --mps > "$W/serve-$g.log" 2>&1 &
  server=$!
  wait_served "$W/serve-$g.log"
  p=$(sample "$W/util-$g.txt")
  s=$(now); python3 -m aa_study.cli run "$STUDY" --profile gpu --quiet --mps > "$OUT/study-$g.log" 2>&1
  wall=$(since $s); kill $p; kill -TERM $server; wait $server || true
  grep -q "runs this launch" "$OUT/study-$g.log" || echo "NOT SERVED: $(grep 'study server' "$OUT/study-$g.log")"
  echo "GPUs $gpus: $wall s, busy per GPU $(busy "$W/util-$g.txt") %" | tee -a "$OUT/partial.txt"
  echo "$wall" > "$W/wall-$g.txt"
  grep -h "GPU share" "$OUT/study-$g.log" || true
done
one=$(cat "$W/wall-0.txt"); two=$(cat "$W/wall-0-1.txt")
echo "two GPUs: $(python3 -c "print(f'{$one / $two:.2f}')")x the one-GPU rate"
diff <(top1s "$OUT/study-0.log") <(top1s "$OUT/study-0-1.log") \
  > /dev/null && echo "each trial's top-1: same" || echo "each trial's top-1: DIFFERS"
