#!/usr/bin/env bash
# make bench: start a private kvcd, run the kvcbench scenarios, write bench/results/*.json
# and print a summary. Every figure is a ratio against memcpy measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
mkdir -p "$out"
dir=$(mktemp -d /tmp/kvcd-bench-XXXXXX)
sock="$dir/kvcd.sock"
./build/kvcd --foreground --socket "$sock" --pool-size "${POOL:-1G}" 2>"$dir/kvcd.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for i in $(seq 100); do ./build/kvcctl --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
./build/kvcbench --socket "$sock" nop --count 200000 --json | tee "$out/nop_busy.json"
./build/kvcbench --socket "$sock" nop --count 100000 --sleep --json | tee "$out/nop_sleep.json"
for bs in 16K 256K 2M 32M; do
	./build/kvcbench --socket "$sock" throughput --block-size $bs --json | tee "$out/throughput_$bs.json"
done
./build/kvcbench --socket "$sock" throughput --block-size 2M --procs 2 --json | tee "$out/throughput_2M_2procs.json"
./build/kvcctl --socket "$sock" stats --json > "$out/daemon_stats.json"
# codecs: in-process, each ISA this CPU has, against memcpy of the same bytes
./build/kvcbench codec --iters 10 --json | tee "$out/codec.json"
