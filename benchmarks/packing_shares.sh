#!/usr/bin/env bash
# How many quickstart gpu trials should share one GPU: the study (9 trials on GPU 0) through one `aa-study serve --mps`
# at each GPU share in SHARES (0.16: six at a time, then three; 0.11: all nine at once), against one-at-a-time bare
# `aa-study train` fits of each of its three cells, all in one run on the GPU host (after `source
# scripts/gpu-host-env.sh`). Prints, per share: wall time, the GPU's busy fraction, the trials per hour against bare
# fits (every cell's, and the κ0.5 relative cell's alone, as issue 18 first counted it) and each trial's top-1 compared
# with the first share's (a trial's result is a function of its cell and seed: it must not change).
# Usage: [COMPILE=MODE] [SHARES="0.16 0.11"] [ROUNDS=2] bash benchmarks/packing_shares.sh
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
W=$(mktemp -d)  # everything but the summaries: the GPU host returns a limited number of files from $OUT
export AA_STUDY_HOME=$(mktemp -d) CUDA_VISIBLE_DEVICES=0
SHARES=${SHARES:-0.16 0.11}
source "$(dirname "$0")/gpu_sampling.sh"
python3 - "$W" "${COMPILE:-}" $SHARES <<'PY'
import sys, yaml
from pipelines.spec import load_study
out, mode, shares = sys.argv[1], sys.argv[2], sys.argv[3:]
spec = yaml.safe_load(open("studies/quickstart.yaml"))
if mode:
    spec["profiles"]["gpu"]["train"]["compile"] = mode
for s in shares:
    spec["name"] = f"quickstart-share{s}" + ("-compiled" if mode else "")
    spec["profiles"]["gpu"]["resources"]["gpu"] = float(s)
    yaml.safe_dump(spec, open(f"{out}/study-{s}.yaml", "w"))
for t in load_study(f"{out}/study-{shares[0]}.yaml", "gpu").trials:
    if t.seed == 0:
        yaml.safe_dump(dict(t.config), open(f"{out}/cell-{'relative' if t.config['pos_enc'] == 'relative' else 'none' if t.config['kappa'] else 'plain'}.yaml", "w"))
PY
python3 -m aa_study.cli train --config "$W/cell-relative.yaml" --epochs 1 > /dev/null 2>&1  # Triton's cache, page cache
touch "$W/bare.txt"
if [ -n "${COMPILE:-}" ]; then
  for c in plain none; do python3 -m aa_study.cli train --config "$W/cell-$c.yaml" --epochs 1 > /dev/null 2>&1; done
fi
for r in $(seq "${ROUNDS:-2}"); do  # rounds interleaved; each cell's fastest fit counts (the bare fits vary most)
  for c in plain none relative; do
    s=$(now); python3 -m aa_study.cli train --config "$W/cell-$c.yaml" > "$W/train-$c.json" 2> "$W/train-$c.err"
    echo "$c $(since $s)" >> "$W/bare.txt"
    echo "bare fit $c, round $r: $(tail -1 "$W/bare.txt" | cut -d' ' -f2) s" | tee -a "$OUT/partial.txt"
  done
done
python3 -m aa_study.cli serve --mps > "$W/serve.log" 2>&1 &
server=$!; trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
wait_served "$W/serve.log"
first=""
for sh in $SHARES; do
  wait_served "$W/serve.log"  # after a launch the server may restart its Ray: its fresh processes import first
  s=$(now); p=$(sample "$W/util-$sh.txt")
  python3 -m aa_study.cli run "$W/study-$sh.yaml" --profile gpu --quiet --mps \
    --tracking-uri "sqlite:///$(mktemp -d)/mlflow.db" > "$W/study-$sh.log" 2>&1
  wall=$(since $s); kill $p
  grep -q "runs this launch" "$W/study-$sh.log" || echo "NOT SERVED: $(grep 'study server' "$W/study-$sh.log")"
  top1s "$W/study-$sh.log" > "$W/top1-$sh.txt"
  same=$([ -z "$first" ] && echo "(reference)" || { diff -q "$W/top1-$first.txt" "$W/top1-$sh.txt" > /dev/null && echo same || echo DIFFER; })
  first=${first:-$sh}
  python3 - "$W/bare.txt" "$sh" "$wall" "$(busy "$W/util-$sh.txt" 1)" "$same" <<'PY' | tee -a "$W/table.txt" "$OUT/partial.txt"
import sys
bare = {}
for line in open(sys.argv[1]):
    c, t = line.split()
    bare[c] = min(bare.get(c, 1e9), float(t))
share, wall, busy, same = sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
every = 3 * sum(bare.values())  # the nine trials, one at a time, bare
ratio = lambda t: f"{t / wall:.2f}x" if len(bare) == 3 else "-"  # ROUNDS=0: no bare fits
print(f"| {share} | {wall:.1f} s | {busy} % | {ratio(every)} | {ratio(9 * bare.get('relative', 0))} | {same} |")
PY
  grep -h "^finished" "$W/study-$sh.log" | sort > "$W/finished-$sh.txt"
done
echo "bare fits (s; each cell's fastest counts): $(tr '\n' ' ' < "$W/bare.txt")${COMPILE:+ (compile: $COMPILE)}"
echo "| GPU share | wall | GPU busy | x bare fits (every cell) | x bare fits (relative cell) | top-1s |"
echo "|---|---|---|---|---|---|"
cat "$W/table.txt"
for sh in $SHARES; do echo "share $sh:"; cat "$W/finished-$sh.txt"; done
cp "$W/table.txt" "$W/bare.txt" "$W"/finished-*.txt "$W/serve.log" "$OUT/"
