#!/usr/bin/env bash
# make bench: run kvcbench's scenarios against their references in the same run and write
# bench/results/*.json only (make bench-docs turns them into docs/performance.md).
#
# BENCH=quick (the default, a few minutes): the ratios that have targets, each measured
# RUNS (3) times with kvcd and its reference alternating inside each run (*_runs.json; the
# median run is also written alone), the index, the prefix and the workload. BENCH=full:
# everything else too (block sizes, process and pool scaling, SELECT, restart, the remote
# tier, codecs). machine.json records the load average and the steal time around the runs:
# the report calls a target noisy when they say the machine was busy.
#
# Peers: a private redis-server on a UNIX socket (no TCP port, no persistence), the minimal
# socket server kvcbench forks itself, memcpy of the same bytes, and the model recomputing a
# prefix. Every daemon and server started here is stopped on exit, whatever happens.
# POOLS="64M 512M 2G 8G" overrides the pool sizes of the pool scaling run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results
model=${MODEL:-../shared/models/stories260K.bin}
mode=${BENCH:-quick}
runs=${RUNS:-3}
case "$mode" in quick|full) ;; *) echo "BENCH=$mode: quick or full" >&2; exit 2 ;; esac
mkdir -p "$out"
dir=$(mktemp -d /tmp/kvcd-bench-XXXXXX)
t_start=$(date +%s)
step() { printf '[%4ds] == %s\n' $(( $(date +%s) - t_start )) "$*"; }
steal() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# a build just before leaves its load in the 1-minute average: wait (up to 90 s) for the
# machine to settle below half its CPUs, so that the load recorded is other work's
for i in $(seq 90); do
	awk -v c="$(nproc)" '{ exit !($1 > c / 2) }' /proc/loadavg || break
	[ "$i" = 1 ] && step "waiting for the load average ($(cut -d' ' -f1 /proc/loadavg)) to settle"
	sleep 1
done
read -r steal0 total0 < <(steal)
load0=$(cut -d' ' -f1 /proc/loadavg)
# median_run FILE...: the run whose FIELD is the median of the runs
median_run() { jq -s --arg f "$1" 'sort_by(.[$f]) | .[length / 2 | floor]'; }
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

rm -f "$out"/*.json
start_kvcd main 1G
step "latency: NOP round trip against the cache-line floor, Redis PING and the socket server ($runs runs)"
for i in $(seq "$runs"); do
	$B --socket "$sock" nop --count 50000 "${redis[@]}" --json
done | tee "$out/nop_busy_runs.jsonl"
median_run p50_socket_over_kvcd <"$out/nop_busy_runs.jsonl" >"$out/nop_busy.json"
jq -s . "$out/nop_busy_runs.jsonl" >"$out/nop_busy_runs.json" && rm "$out/nop_busy_runs.jsonl"
$B --socket "$sock" nop --count 50000 --sleep "${redis[@]}" --json | tee "$out/nop_sleep.json"

step "throughput: 2 MiB STORE+FETCH against Redis SET+GET, the socket server and memcpy ($runs runs)"
for i in $(seq "$runs"); do
	$B --socket "$sock" throughput --block-size 2M "${redis[@]}" --json
done | tee "$dir/tp2.jsonl"
jq -s . "$dir/tp2.jsonl" >"$out/throughput_2m_runs.json"
if [ "$mode" = full ]; then
	step "throughput: every block size"
	for bs in 16K 64K 256K 1M 8M 32M; do
		$B --socket "$sock" throughput --block-size $bs "${redis[@]}" --json
	done | tee "$dir/tp.jsonl"
fi
touch "$dir/tp.jsonl"
{ cat "$dir/tp.jsonl"; median_run ratio_vs_memcpy <"$dir/tp2.jsonl"; } |
	jq -s 'sort_by(.block_size)' >"$out/throughput.json"

step "scaling: index size (LOOKUP and STORE of 256-byte blocks, memory per block)"
$B --socket "$sock" index --blocks 1000000 --pid "$kpid" --json | tee "$out/index.json"

if [ -r "$model" ]; then
	step "prefix hit path against recomputing the prefix ($model)"
	$B --socket "$sock" prefix --model "$model" --json | tee "$out/prefix.json"
else
	step "prefix: model $model is absent; skipped"
fi

step "waiting: libkvcclient's default (adaptive) waits against a busy-polling client, quiet ($runs runs)"
for i in $(seq "$runs"); do
	nb=$($B --socket "$sock" nop --count 50000 --no-peers --json)
	na=$($B --socket "$sock" nop --count 50000 --adaptive --no-peers --json)
	tb=$($B --socket "$sock" throughput --block-size 2M --no-peers --json)
	ta=$($B --socket "$sock" throughput --block-size 2M --adaptive --no-peers --json)
	jq -nc --argjson nb "$nb" --argjson na "$na" --argjson tb "$tb" --argjson ta "$ta" \
		'{nop_busy_p50_us: $nb.p50_us, nop_adaptive_p50_us: $na.p50_us,
		  nop_adaptive_over_busy: ($na.p50_us / $nb.p50_us * 1000 | round / 1000),
		  tp_busy_gbps: $tb.store_fetch_gbps, tp_adaptive_gbps: $ta.store_fetch_gbps,
		  tp_adaptive_over_busy: ($ta.store_fetch_gbps / $tb.store_fetch_gbps * 1000 | round / 1000)}'
done | tee "$dir/waiting.jsonl"
jq -s . "$dir/waiting.jsonl" >"$out/waiting_quiet.json"

step "contention: NOP and 2 MiB STORE+FETCH with 2 CPU-burning processes per core beside ($runs runs)"
burn=$(( 2 * $(nproc) ))
# BENCH=full: 512 blocks each way, about a second under the load, so that the scheduler's
# placement and the adaptive client's choice of waiting settle as in an engine that runs for
# hours; quick: 128, to stay within its time
tp_iters=128
[ "$mode" = full ] && tp_iters=512
for i in $(seq "$runs"); do
	$B --socket "$sock" nop --count 20000 --burn $burn --json
	$B --socket "$sock" nop --count 20000 --adaptive --burn $burn --json
	$B --socket "$sock" nop --count 20000 --sleep --burn $burn --json
	$B --socket "$sock" throughput --block-size 2M --iters $tp_iters --burn $burn --json
	$B --socket "$sock" throughput --block-size 2M --iters $tp_iters --adaptive --burn $burn \
		--json
done | jq -s --argjson burn $burn '{burners: $burn, runs: [range(0; length; 5) as $k |
	{nop_busy: .[$k], nop_adaptive: .[$k + 1], nop_sleep: .[$k + 2], throughput: .[$k + 3],
	 throughput_adaptive: .[$k + 4]}]}' | tee "$out/contention.json"

if [ "$mode" = full ]; then
step "scaling: client processes (2 MiB blocks)"
for n in 1 2 4 8 16; do
	$B --socket "$sock" throughput --block-size 2M --procs $n --iters 128 --no-peers --json
done | tee "$dir/procs.jsonl"
jq -s . "$dir/procs.jsonl" > "$out/scaling_procs.json"

step "select: retrieval over 10,000 blocks (8 KV heads x 128), recall on real keys"
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
fi
./build/kvcctl --socket "$sock" stats --json > "$out/daemon_stats.json"
stop_kvcd

step "workload: the fleet trace replayed on kvcd, Redis (allkeys-lru), LRU and Belady, with the same memory"
$B workload --kvcd ./build/kvcd --trace bench/traces/fleet-s1.jsonl --json | tee "$out/workload.json"

if [ "$mode" = full ]; then

step "scaling: pool size"
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

step "cold working set: random blocks of a 4 GiB pool against memcpy of the same pattern"
{
	$B cold --kvcd ./build/kvcd --pool-size 4G --block-size 256K --json
	$B cold --kvcd ./build/kvcd --pool-size 4G --block-size 2M --json
} | jq -s . | tee "$out/cold.json"

step "warm restart: SIGKILL under 8 verifying readers, against the cold start of the same pool"
$B restart --kvcd ./build/kvcd --pool-size ${RESTART_POOL:-4G} --procs 8 --json \
	| tee "$out/restart.json"

step "remote tier: fetch-through from a 3+3 Redis Cluster against raw GETs on the same cluster"
seeds=$(./tools/redis-cluster.sh start "$dir/cluster" "${CLUSTER_PORT:-21000}")
$B remote --kvcd ./build/kvcd --cluster "$seeds" --block-size 2M --json \
	$( [ -f "$model" ] && echo --model "$model") \
	| tee "$out/remote.json"
./tools/redis-cluster.sh stop "$dir/cluster"

step "codecs (in-process, each ISA this CPU has; $runs runs)"
for i in $(seq "$runs"); do # each run times memcpy too
	"$(dirname "$B")/kvccodec-bench" codec --iters 10 --json | tee "$dir/codec.jsonl" >&2
	jq -s . "$dir/codec.jsonl"
done | jq -s . > "$out/codec_runs.json"
jq '.[-1]' "$out/codec_runs.json" > "$out/codec.json" # the table shows the last run
fi

read -r steal1 total1 < <(steal)
jq -n --arg mode "$mode" --argjson runs "$runs" --argjson cpus "$(nproc)" \
	--argjson load0 "$load0" --argjson load1 "$(cut -d' ' -f1 /proc/loadavg)" \
	--argjson steal "$(awk -v a=$((steal1 - steal0)) -v b=$((total1 - total0)) \
		'BEGIN { printf "%.2f", b ? 100 * a / b : 0 }')" \
	--argjson seconds $(( $(date +%s) - t_start )) --arg host "$(uname -r)" \
	'{mode: $mode, runs: $runs, cpus: $cpus, load1_start: $load0, load1_end: $load1,
	  steal_pct: $steal, seconds: $seconds, kernel: $host}' | tee "$out/machine.json"
step "done: bench/results/ (make bench-docs writes docs/performance.md from it)"
