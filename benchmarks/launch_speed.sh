#!/usr/bin/env bash
# Issue 18's launch numbers, measured in one run on the GPU host (after `source scripts/gpu-host-env.sh`):
#   the quickstart gpu study as shipped on one GPU (resources.gpu 0.16: six trials share it), its GPU busy fraction;
#   a relaunch of it with nothing to run; `aa-study status`; one of its cells as a bare `aa-study train` fit (and
#   the GPU busy fraction of that fit alone); the same cell as a one-trial study through `aa-study run`, with where
#   the time went (AA_STUDY_TIMING stamps: the trial's process, its fit, each epoch; the launch's phases);
#   where the host has two GPUs or more, the study again on all of them (per-GPU busy fractions, the ratio).
# Prints markdown tables with the ratios. Usage: bash benchmarks/launch_speed.sh [skip-study]
# (env ROUNDS=N train/run pairs; MPS_TOO=1 the study again with --mps; SERVER_TOO=1 a study server (`aa-study serve`,
# with --mps under MPS_TOO) started after the warm-up: each one-trial run again through it, and the --mps study too)
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
export AA_STUDY_HOME=$(mktemp -d)
GPUS=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
source "$(dirname "$0")/gpu_sampling.sh"
python3 - "$OUT" <<'PY'
import sys, yaml
out = sys.argv[1]
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
# warm-up: the first fit on a fresh machine compiles the Triton kernels (cached for every later process) and reads
# torch from a cold page cache (seconds): without it, whichever command runs first is charged for both
CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli train --config "$OUT/cell.yaml" --epochs 1 > /dev/null 2>&1
export AA_STUDY_TIMING=1  # stamps (cheap lines); the same for the server and its clients, which it checks
if [ -n "${SERVER_TOO:-}" ]; then
  SERVER_HOME=$(mktemp -d)
  CUDA_VISIBLE_DEVICES=0 AA_STUDY_HOME=$SERVER_HOME python3 -m aa_study.cli serve ${MPS_TOO:+--mps} > "$OUT/serve.log" 2>&1 &
  server_pid=$!
  trap 'kill -TERM $server_pid 2>/dev/null; wait $server_pid 2>/dev/null' EXIT
  t0=$SECONDS; wait_served "$OUT/serve.log"
  grep -m1 "ready" "$OUT/serve.log" | tee -a "$OUT/partial.txt"
  echo "server: $(pgrep -fc '^ray::IDLE' || true) idle worker processes after $((SECONDS - t0)) s; on the GPU:" \
    "$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | wc -l) processes" | tee -a "$OUT/partial.txt"
fi
served_run() {  # $1: log; the rest: arguments of aa-study run, through the server with a store of its own
  local d; d=$(mktemp -d)
  CUDA_VISIBLE_DEVICES=0 AA_STUDY_HOME=$SERVER_HOME python3 -m aa_study.cli run "${@:2}" --quiet \
    --tracking-uri "sqlite:///$d/mlflow.db" > "$1" 2>&1
  grep -q "runs this launch" "$1" || { echo "NOT SERVED: $(grep 'study server' "$1")" | tee -a "$OUT/partial.txt"; }
}
study=nan; sbusy=nan; noop=nan; status=nan
if [ "${1:-}" != "skip-study" ]; then
  s=$(now); p=$(sample "$OUT/util-study.txt")
  CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli run studies/quickstart.yaml --profile gpu --quiet > "$OUT/study.log" 2>&1
  study=$(since $s); kill $p; sbusy=$(busy "$OUT/util-study.txt" 1)
  echo "study $study s, GPU busy $sbusy %" | tee -a "$OUT/partial.txt"  # each number as soon as it is measured
  s=$(now); CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli run studies/quickstart.yaml --profile gpu --quiet > "$OUT/noop.log" 2>&1; noop=$(since $s)
  s=$(now); python3 -m aa_study.cli status studies/quickstart.yaml --profile gpu > /dev/null 2>&1; status=$(since $s)
  if [ -n "${MPS_TOO:-}" ]; then  # the same study again, from an empty store, with --mps
    s=$(now); p=$(sample "$OUT/util-mps.txt")
    CUDA_VISIBLE_DEVICES=0 AA_STUDY_HOME=$(mktemp -d) python3 -m aa_study.cli run studies/quickstart.yaml --profile gpu \
      --quiet --mps > "$OUT/study-mps.log" 2>&1
    mps_wall=$(since $s); kill $p
    echo "study --mps $mps_wall s, GPU busy $(busy "$OUT/util-mps.txt" 1) %" | tee -a "$OUT/partial.txt"
    mps_line="| the same with --mps, wall | $mps_wall s | $(python3 -c "print(f'{$study / $mps_wall:.2f}')")x faster; busy $(busy "$OUT/util-mps.txt" 1) % |"
    diff <(top1s "$OUT/study.log") \
         <(top1s "$OUT/study-mps.log") > /dev/null \
      && mps_line="$mps_line each trial's top-1 the same as without MPS |" || mps_line="$mps_line TOP-1 DIFFERS |"
  fi
  if [ -n "${SERVER_TOO:-}" ]; then  # the same study through the server (serve --mps and run --mps under MPS_TOO)
    s=$(now); p=$(sample "$OUT/util-served.txt")
    served_run "$OUT/study-served.log" studies/quickstart.yaml --profile gpu ${MPS_TOO:+--mps}
    served_wall=$(since $s); kill $p
    echo "study through the server${MPS_TOO:+ (--mps)} $served_wall s, GPU busy $(busy "$OUT/util-served.txt" 1) %" | tee -a "$OUT/partial.txt"
    served_line="| the same through aa-study serve${MPS_TOO:+ --mps}, wall | $served_wall s | busy $(busy "$OUT/util-served.txt" 1) % |"
    diff <(top1s "$OUT/study.log") \
         <(top1s "$OUT/study-served.log") > /dev/null \
      && served_line="$served_line each trial's top-1 the same as the study on its own |" || served_line="$served_line TOP-1 DIFFERS |"
  fi
fi
rounds=""
for round in $(seq 1 "${ROUNDS:-2}"); do  # train and run alternate: each pair on the same warm machine
  s=$(now); p=$(sample "$OUT/util-train.txt")
  CUDA_VISIBLE_DEVICES=0 python3 -m aa_study.cli train --config "$OUT/cell.yaml" > "$OUT/train.json" 2> "$OUT/train.err"
  train=$(since $s); kill $p; tbusy=$(busy "$OUT/util-train.txt" 1); train_start=$s
  home=$(mktemp -d)  # a fresh store each round: the one-trial study runs every time
  s=$(now); CUDA_VISIBLE_DEVICES=0 AA_STUDY_HOME=$home python3 -m aa_study.cli run \
    "$OUT/one-trial.yaml" --profile gpu --quiet > "$OUT/one.log" 2>&1
  one=$(since $s); one_start=$s
  cp "$home"/logs/quickstart-one-gpu-*.log "$OUT/one-trial-launch.log"
  rounds="$rounds | round $round: train $train s, run $one s (+$(python3 -c "print(round($one - $train, 1))") s)"
  echo "round $round: train $train s (busy $tbusy %), run $one s" | tee -a "$OUT/partial.txt"
  if [ -n "${SERVER_TOO:-}" ]; then  # the same one-trial study through the study server
    s=$(now); served_run "$OUT/one-served.log" "$OUT/one-trial.yaml" --profile gpu
    warm=$(since $s); rounds="$rounds, through aa-study serve $warm s (+$(python3 -c "print(round($warm - $train, 1))") s)"
    warm_start=$s
    cp "$(ls -t "$SERVER_HOME"/logs/quickstart-one-gpu-*.log | head -1)" "$OUT/one-served-launch.log"
    echo "round $round: run through the server $warm s" | tee -a "$OUT/partial.txt"
  fi
done
unset AA_STUDY_TIMING
echo "one trial, run vs train $rounds"
python3 - "$study" "$sbusy" "$noop" "$status" "$train" "$tbusy" "$one" <<'PY'
import sys
study, sbusy, noop, status, train, tbusy, one = sys.argv[1:]
study, noop, status, train, one = map(float, (study, noop, status, train, one))
print("| measurement | value | ratio |\n|---|---|---|")
print(f"| quickstart gpu as shipped (9 trials, 6 at a time on GPU 0), wall | {study:.1f} s | {9 * train / study:.2f}x the trials/hour of one-at-a-time bare fits |")
print(f"| GPU busy during it (nvidia-smi, 1 s samples, mean %) | {sbusy} | |")
print(f"| relaunch with nothing to run | {noop:.2f} s | |")
print(f"| aa-study status | {status:.2f} s | |")
print(f"| one cell (κ=υ=0.5, relative, seed 0, 24 epochs) through aa-study train | {train:.1f} s | 1.00x |")
print(f"| GPU busy during that bare fit (mean %) | {tbusy} | |")
print(f"| the same cell as a one-trial study through aa-study run | {one:.1f} s | {one / train:.2f}x (+{one - train:.1f} s) |")
PY
python3 - "$train_start" "$OUT/train.err" "$one_start" "$OUT/one-trial-launch.log" "${warm_start:-}" \
  "$OUT/one-served-launch.log" <<'PY'
import os, re, sys
def stamps(start, path):
    out = {}
    for line in open(path, errors="replace"):
        m = re.search(r"\[aa-study timing\] ([\d.]+) (.*)", line)
        if m:
            out.setdefault(m.group(2).strip(), float(m.group(1)) - float(start))
        if "launch phases" in line:
            out["phases"] = line.split("launch phases", 1)[1].strip()
    return out
t, r = stamps(sys.argv[1], sys.argv[2]), stamps(sys.argv[3], sys.argv[4])
w = stamps(sys.argv[5], sys.argv[6]) if sys.argv[5] and os.path.exists(sys.argv[6]) else {}
print("\n| seconds after the command started | train | run (one trial) |" + (" run through aa-study serve |" if w else "")
      + "\n|---|---|---|" + ("---|" if w else ""))
for k in ("driver: process started", "driver: launch begins", "driver: ray up", "driver: tuner.fit called",
          "trial process started", "trial function entered",
          "driver: store open", "fit entered", "data and network built", "first step", "epoch 1 trained",
          "epoch 1 reported", "epoch 24 trained", "fit done"):
    f = lambda d: f"{d[k]:.2f}" if k in d else ""
    print(f"| {k} | {f(t)} | {f(r)} |" + (f" {f(w)} |" if w else ""))
print(f"\nlaunch phases {r.get('phases', '')}" + (f"\nthrough the server: launch phases {w.get('phases', '')}" if w else ""))
PY
if [ "$GPUS" -ge 2 ] && [ "${1:-}" != "skip-study" ]; then
  export AA_STUDY_HOME=$(mktemp -d)
  s=$(now); p=$(sample "$OUT/util-two.txt")
  python3 -m aa_study.cli run studies/quickstart.yaml --profile gpu --quiet > "$OUT/study-two.log" 2>&1
  two=$(since $s); kill $p
  echo
  echo "| quickstart gpu on $GPUS GPUs | wall $two s | $(python3 -c "print(f'{$study / $two:.2f}')")x the one-GPU rate | GPU busy per GPU (mean %): $(busy "$OUT/util-two.txt") |"
  grep -h "GPU share" "$OUT/study-two.log" || true
fi
[ -n "${mps_line:-}" ] && echo "$mps_line" && echo "(--mps ratio against bare fits: $(python3 -c "print(f'{9 * $train / $mps_wall:.2f}')")x)"
[ -n "${served_line:-}" ] && echo "$served_line" && echo "(through the server, ratio against bare fits: $(python3 -c "print(f'{9 * $train / $served_wall:.2f}')")x)"
grep -h "val_top1" "$OUT/train.json" | tr -d ' ,'
grep -h "finished .*s0" "$OUT/one.log" || true
