# Sourced by the launch benchmarks on the GPU host (launch_speed.sh, compile_packing.sh, server_packing.sh,
# packing_shares.sh, server_two_gpus.sh):
#   now / since START        wall-clock seconds, and the seconds since START, to 0.01 s
#   sample FILE              nvidia-smi's utilization of every GPU, once a second, into FILE (prints the sampler's pid)
#   busy FILE [N]            mean utilization per GPU, "a / b"; with N, of the first N GPUs only
#   wait_served LOG          until `aa-study serve` (its output in LOG) is ready and its Ray holds one idle, pre-imported
#                            worker process per CPU (or 2 and 1 minutes have passed)
#   top1s LOG                a launch's trials and their top-1 (its `finished` lines, without their clocks), sorted
now() { date +%s.%N; }
since() { python3 -c "print(round($(now) - $1, 2))"; }
sample() { nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits -l 1 > "$1" & echo $!; }
busy() { python3 - "$1" "${2:-0}" <<'PY'
import sys, collections
v = collections.defaultdict(list)
for line in open(sys.argv[1]):
    i, u = line.split(",")
    v[int(i)].append(float(u))
print(" / ".join(f"{sum(x) / len(x):.1f}" for i, x in sorted(v.items()) if i < max(1, int(sys.argv[2])) or int(sys.argv[2]) == 0))
PY
}
wait_served() {
  for _ in $(seq 240); do grep -q ready "$1" && break; sleep 0.5; done
  for _ in $(seq 120); do [ "$(pgrep -fc '^ray::IDLE' || true)" -ge "$(nproc)" ] && break; sleep 0.5; done
}
top1s() { grep -h "^finished" "$1" | sed 's/ (.*//' | sort; }
