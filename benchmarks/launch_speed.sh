#!/usr/bin/env bash
# Issue 18's launch numbers, measured in one run on the GPU host (after `source scripts/gpu-host-env.sh`):
#   the quickstart gpu study with every trial at once (GPU share 1/9 each), its GPU busy fraction;
#   a relaunch of it with nothing to run; one of its cells as a bare `aa-study train` fit; the same cell as a
#   one-trial study through `aa-study run`. Prints a table with the ratios. Usage: bash benchmarks/launch_speed.sh
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export AA_STUDY_HOME=$(mktemp -d)
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 2))"; }
python3 - "$OUT" <<'PY'
import sys, yaml
out = sys.argv[1]
s = yaml.safe_load(open("studies/quickstart.yaml"))
s["profiles"]["gpu"]["resources"]["gpu"] = round(1 / 9, 4)  # the 9 trials at once
yaml.safe_dump(s, open(f"{out}/all-at-once.yaml", "w"))
one = yaml.safe_load(open("studies/quickstart.yaml"))
one["name"] = "quickstart-one"
one["grid"] = {**one["grid"], "kappa": [0.5], "pos_enc": ["relative"]}
one["profiles"]["gpu"]["seeds"] = [0]
one["profiles"]["gpu"]["resources"]["gpu"] = 1
yaml.safe_dump(one, open(f"{out}/one-trial.yaml", "w"))
from pipelines.spec import load_study
(t,) = load_study(f"{out}/one-trial.yaml", "gpu").trials
yaml.safe_dump({k: v for k, v in t.config.items()}, open(f"{out}/cell.yaml", "w"))
PY
nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -l 1 > "$OUT/util.txt" & sampler=$!
s=$(now); python3 -m aa_study.cli run "$OUT/all-at-once.yaml" --profile gpu --quiet > "$OUT/study.log" 2>&1; study=$(since $s)
kill $sampler
busy=$(awk '{s+=$1; n++} END {printf "%.1f", s/n}' "$OUT/util.txt")
s=$(now); python3 -m aa_study.cli run "$OUT/all-at-once.yaml" --profile gpu --quiet > "$OUT/noop.log" 2>&1; noop=$(since $s)
s=$(now); python3 -m aa_study.cli status "$OUT/all-at-once.yaml" --profile gpu > /dev/null 2>&1; status=$(since $s)
s=$(now); python3 -m aa_study.cli train --config "$OUT/cell.yaml" > "$OUT/train.json" 2> "$OUT/train.err"; train=$(since $s)
s=$(now); python3 -m aa_study.cli run "$OUT/one-trial.yaml" --profile gpu --quiet > "$OUT/one.log" 2>&1; one=$(since $s)
python3 - "$study" "$busy" "$noop" "$status" "$train" "$one" <<'PY'
import sys
study, busy, noop, status, train, one = map(float, sys.argv[1:])
print("| measurement | value | ratio |\n|---|---|---|")
print(f"| quickstart gpu, 9 trials at once (1/9 GPU each), wall | {study:.1f} s | {9 * train / study:.2f}x the trials/hour of one-at-a-time bare fits |")
print(f"| GPU busy during it (nvidia-smi, 1 s samples, mean) | {busy:.1f} % | |")
print(f"| relaunch with nothing to run | {noop:.2f} s | |")
print(f"| aa-study status | {status:.2f} s | |")
print(f"| one cell (κ=υ=0.5, relative, seed 0) through aa-study train | {train:.1f} s | 1.00x |")
print(f"| the same cell as a one-trial study through aa-study run | {one:.1f} s | {one / train:.2f}x (+{one - train:.1f} s) |")
PY
grep -h "val_top1\|val_loss" "$OUT/train.json" | tr -d ' ,'
