#!/usr/bin/env bash
# make bench: run every kvcbench scenario against its references in the same run and write
# bench/results/*.json, the plots docs/perf-*.png and the summary docs/performance.md.
#
# Peers: a private redis-server on a UNIX socket (no TCP port, no persistence), the minimal
# socket server kvcbench forks itself, memcpy of the same bytes, and the model recomputing a
# prefix. Every daemon and server started here is stopped on exit, whatever happens.
# POOLS="64M 512M 2G 8G" overrides the pool sizes of the pool scaling run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
model=${MODEL:-../shared/models/stories260K.bin}
mkdir -p "$out"
dir=$(mktemp -d /tmp/kvcd-bench-XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -d "$dir/cluster" ] && ./tools/redis-cluster.sh stop "$dir/cluster"
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT
B=./build/kvcbench

# start_kvcd NAME POOL: a private kvcd; sets $sock and $kpid, and $ready_s (start to ready)
start_kvcd() {
	sock="$dir/$1.sock"
	local t0=$(date +%s.%N)
	./build/kvcd --foreground --socket "$sock" --pool-size "$2" 2>"$dir/$1.log" </dev/null &
	kpid=$!
	pids+=("$kpid")
	for i in $(seq 600); do
		./build/kvcctl --socket "$sock" ping >/dev/null 2>&1 && break
		kill -0 "$kpid" 2>/dev/null || { cat "$dir/$1.log" >&2; exit 1; }
		sleep 0.05
	done
	ready_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
}
stop_kvcd() {
	kill "$kpid"
	wait "$kpid" 2>/dev/null || true
}

redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --save '' \
	--appendonly no --daemonize no >"$dir/redis.log" 2>&1 </dev/null &
pids+=($!)
for i in $(seq 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.05; done
redis=(--redis "$dir/redis.sock")

echo "== latency: NOP round trip against Redis PING and the minimal socket server"
start_kvcd main 1G
$B --socket "$sock" nop --count 200000 "${redis[@]}" --json | tee "$out/nop_busy.json"
$B --socket "$sock" nop --count 100000 --sleep "${redis[@]}" --json | tee "$out/nop_sleep.json"

echo "== throughput: STORE+FETCH against Redis SET+GET, the socket server and memcpy"
for bs in 16K 64K 256K 1M 2M 8M 32M; do
	$B --socket "$sock" throughput --block-size $bs "${redis[@]}" --json
done | tee "$dir/tp.jsonl"
jq -s . "$dir/tp.jsonl" > "$out/throughput.json"

echo "== scaling: client processes (2 MiB blocks)"
for n in 1 2 4 8 16; do
	$B --socket "$sock" throughput --block-size 2M --procs $n --iters 128 --no-peers --json
done | tee "$dir/procs.jsonl"
jq -s . "$dir/procs.jsonl" > "$out/scaling_procs.json"

echo "== scaling: index size (LOOKUP and STORE of 256-byte blocks, memory per block)"
$B --socket "$sock" index --blocks 1000000 --pid "$kpid" --json | tee "$out/index.json"

if [ -r "$model" ]; then
	echo "== prefix hit path against recomputing the prefix ($model)"
	$B --socket "$sock" prefix --model "$model" --json | tee "$out/prefix.json"
else
	echo "== prefix: model $model is absent; skipped"
	rm -f "$out/prefix.json"
fi
echo "== select: retrieval over 10,000 blocks (8 KV heads x 128), recall on real keys"
sel_model=()
[ -r "$model" ] && sel_model=(--model "$model")
rm -f "$out"/select*.json
# name, summary policy, query heads (32: GQA, 4 per KV head)
while read -r name pol heads; do
	$B --socket "$sock" select --blocks 10000 --heads "$heads" --policy "$pol" \
		"${sel_model[@]}" --json | tee "$out/select_$name.json"
done <<'SEL'
quest none:summary=quest 8
quest_gqa none:summary=quest 32
reps2 none:summary=reps,reps=2 8
reps4 none:summary=reps,reps=4 8
reps8 none:summary=reps8 8
reps8_gqa none:summary=reps8 32
SEL
./build/kvcctl --socket "$sock" stats --json > "$out/daemon_stats.json"
stop_kvcd

echo "== scaling: pool size"
for pool in ${POOLS:-64M 512M 2G 8G}; do
	start_kvcd "pool$pool" "$pool"
	tp=$($B --socket "$sock" throughput --block-size 2M --iters 256 --no-peers --json)
	ix=$($B --socket "$sock" index --blocks 100000 --pid "$kpid" --json)
	rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$kpid/status")
	jq -nc --arg pool "$pool" --argjson ready "$ready_s" --argjson tp "$tp" --argjson ix "$ix" \
		--argjson rss "$rss" '{pool: $pool, ready_s: $ready, rss_bytes: $rss,
		store_fetch_gbps: $tp.store_fetch_gbps, ratio_vs_memcpy: $tp.ratio_vs_memcpy,
		index: $ix.points[-1]}'
	stop_kvcd
done | tee "$dir/pools.jsonl"
jq -s . "$dir/pools.jsonl" > "$out/scaling_pool.json"

echo "== warm restart: SIGKILL under 8 verifying readers, against the cold start of the same pool"
$B restart --kvcd ./build/kvcd --pool-size ${RESTART_POOL:-4G} --procs 8 --json \
	| tee "$out/restart.json"

echo "== remote tier: fetch-through from a 3+3 Redis Cluster against raw GETs on the same cluster"
seeds=$(./tools/redis-cluster.sh start "$dir/cluster" "${CLUSTER_PORT:-21000}")
$B remote --kvcd ./build/kvcd --cluster "$seeds" --block-size 2M --json \
	$( [ -f "$model" ] && echo --model "$model") \
	| tee "$out/remote.json"
./tools/redis-cluster.sh stop "$dir/cluster"

echo "== workload: the fleet trace replayed on kvcd, Redis (allkeys-lru), LRU and Belady, with the same memory"
$B workload --kvcd ./build/kvcd --trace bench/traces/fleet-s1.jsonl --json | tee "$out/workload.json"

echo "== codecs (in-process, each ISA this CPU has)"
"$(dirname "$B")/kvccodec-bench" codec --iters 10 --json | tee "$dir/codec.jsonl"
jq -s . "$dir/codec.jsonl" > "$out/codec.json"

./tools/bench_report.sh
