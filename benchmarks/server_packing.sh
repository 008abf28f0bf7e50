#!/usr/bin/env bash
# Issue 18's packing numbers with the study server, in one run on the GPU host (after `source scripts/gpu-host-env.sh`):
# one cell of the quickstart gpu study as a bare `aa-study train` fit; the study (9 trials sharing GPU 0) with --mps on
# its own; the same study through `aa-study serve --mps` (its Ray up, one pre-imported worker process per CPU, so no
# trial pays Ray's start or its own imports); each with the GPU's busy fraction, the ratio to one-at-a-time bare fits,
# and each trial's top-1 compared between the two launches. Usage: [COMPILE=MODE] bash benchmarks/server_packing.sh
# (COMPILE: the study's and the bare fit's `compile`, e.g. reduce-overhead; a one-epoch fit fills its on-disk cache)
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export AA_STUDY_HOME=$(mktemp -d) CUDA_VISIBLE_DEVICES=0
source "$(dirname "$0")/gpu_sampling.sh"
python3 - "$OUT" "${COMPILE:-}" <<'PY'
import sys, yaml
from pipelines.spec import load_study
out, mode = sys.argv[1], sys.argv[2]
spec = yaml.safe_load(open("studies/quickstart.yaml"))
if mode:
    spec["name"] = "quickstart-compiled"
    spec["profiles"]["gpu"]["train"]["compile"] = mode
yaml.safe_dump(spec, open(f"{out}/study.yaml", "w"))
trials = load_study(f"{out}/study.yaml", "gpu").trials
t = next(t for t in trials if t.config["kappa"] == 0.5 and t.config["pos_enc"] == "relative" and t.seed == 0)
yaml.safe_dump(dict(t.config), open(f"{out}/cell.yaml", "w"))
PY
python3 -m aa_study.cli train --config "$OUT/cell.yaml" --epochs 1 > /dev/null 2>&1  # Triton's cache, page cache
s=$(now); python3 -m aa_study.cli train --config "$OUT/cell.yaml" > "$OUT/train.json" 2> "$OUT/train.err"; train=$(since $s)
echo "bare fit $train s, val_top1 $(python3 -c "import json; print(json.load(open('$OUT/train.json'))['val_top1'])")" | tee -a "$OUT/partial.txt"
s=$(now); p=$(sample "$OUT/util-alone.txt")
python3 -m aa_study.cli run "$OUT/study.yaml" --profile gpu --quiet --mps > "$OUT/study-alone.log" 2>&1
alone=$(since $s); kill $p
echo "study --mps on its own $alone s, busy $(busy "$OUT/util-alone.txt" 1) %" | tee -a "$OUT/partial.txt"
python3 -m aa_study.cli serve --mps > "$OUT/serve.log" 2>&1 &
server=$!; trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
wait_served "$OUT/serve.log"
echo "server ready; $(pgrep -fc '^ray::IDLE' || true) idle workers; $(nvidia-smi --query-compute-apps=pid --format=csv,noheader | wc -l) processes on the GPU" | tee -a "$OUT/partial.txt"
s=$(now); p=$(sample "$OUT/util-served.txt")
python3 -m aa_study.cli run "$OUT/study.yaml" --profile gpu --quiet --mps \
  --tracking-uri "sqlite:///$(mktemp -d)/mlflow.db" > "$OUT/study-served.log" 2>&1
served=$(since $s); kill $p
grep -q "runs this launch" "$OUT/study-served.log" || echo "NOT SERVED: $(grep 'study server' "$OUT/study-served.log")"
echo "study --mps through the server $served s, busy $(busy "$OUT/util-served.txt" 1) %" | tee -a "$OUT/partial.txt"
same=$(diff <(top1s "$OUT/study-alone.log") \
            <(top1s "$OUT/study-served.log") > /dev/null && echo same || echo DIFFER)
echo "| | wall | GPU busy | trials/hour against one-at-a-time bare fits ($train s) |"
echo "|---|---|---|---|"
echo "| quickstart gpu${COMPILE:+ (compile: $COMPILE)}, --mps, on its own | $alone s | $(busy "$OUT/util-alone.txt" 1) % | $(python3 -c "print(f'{9 * $train / $alone:.2f}')")x |"
echo "| the same through aa-study serve --mps | $served s | $(busy "$OUT/util-served.txt" 1) % | $(python3 -c "print(f'{9 * $train / $served:.2f}')")x |"
echo "each trial's top-1: $same"
grep -h "^finished" "$OUT/study-served.log" | sort
