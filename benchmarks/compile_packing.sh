#!/usr/bin/env bash
# The quickstart gpu study with `compile: reduce-overhead` (torch.compile + CUDA graphs) against one-at-a-time bare
# fits of one of its cells with the same setting (issue 18's packing ratio), on the GPU host after
# `source scripts/gpu-host-env.sh`:
#   bash benchmarks/compile_packing.sh [--mps]
# A one-epoch fit first fills torch.compile's on-disk cache, so the bare fit and the study's trials both start warm.
# Prints the bare fit's wall and top-1, the study's trials (the bare fit's cell and seed among them: the same top-1
# is expected), the study's wall and GPU busy fraction, and the ratio.
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export AA_STUDY_HOME=$(mktemp -d)
python3 - "$OUT" <<'PY'
import sys, yaml
out = sys.argv[1]
spec = yaml.safe_load(open("studies/quickstart.yaml"))
spec["name"] = "quickstart-compiled"
spec["profiles"]["gpu"]["train"]["compile"] = "reduce-overhead"
yaml.safe_dump(spec, open(f"{out}/compiled.yaml", "w"))
from pipelines.spec import load_study
trials = load_study(f"{out}/compiled.yaml", "gpu").trials
t = next(t for t in trials if t.config["kappa"] == 0.5 and t.config["pos_enc"] == "relative" and t.seed == 0)
yaml.safe_dump(dict(t.config), open(f"{out}/cell.yaml", "w"))
open(f"{out}/trials.txt", "w").write(str(len(trials)))
PY
source "$(dirname "$0")/gpu_sampling.sh"
CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli train --config "$OUT/cell.yaml" --epochs 1 > /dev/null 2>&1
s=$(now); CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli train --config "$OUT/cell.yaml" > "$OUT/bare.json" 2> "$OUT/bare.err"
bare=$(since $s)
echo "bare fit: $bare s, val_top1 $(python3 -c "import json,sys; print(json.load(open('$OUT/bare.json'))['val_top1'])")"
p=$(sample "$OUT/util.txt")
s=$(now); CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli run "$OUT/compiled.yaml" --profile gpu --quiet "$@" > "$OUT/study.log" 2>&1
study=$(since $s); kill $p
busy=$(busy "$OUT/util.txt" 1)
grep "^finished\|^aa_resnet18\|^cell" "$OUT/study.log" || true
n=$(cat "$OUT/trials.txt")
python3 -c "print(f'study ($n trials, $*): $study s, GPU busy $busy %; {$n * $bare / $study:.2f}x the trials per hour of one-at-a-time bare fits')"
