#!/usr/bin/env bash
# make eval: start a private kvcd, measure every policy family with kvc-eval on the real model,
# and regenerate docs/quality.md and docs/quality.png. Defaults: 16 sequences sampled at
# temperature 0.8, prefix 256, continuation 128 (override with SEQS, TEMP, PREFIX, CONT).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-../shared/models/stories260K.bin}
if [ ! -r "$model" ]; then echo "make eval: model $model is absent" >&2; exit 1; fi
seqs=${SEQS:-16} temp=${TEMP:-0.8} prefix=${PREFIX:-256} cont=${CONT:-128}
policies="none;fp8;fp8:group=32;int8;int6;int5;int4;int3;int2;int6:group=8;int4:group=8;\
int4:rotate=hadamard;int5:rotate=hadamard;int4:sink=4;int4:outliers=2;int4:sparse=1%;\
int5:hibits=8,hipct=10;int4:hibits=8,hipct=20;\
kivi:kbits=4,vbits=4,group=32;kivi:kbits=4,vbits=4,group=64;kivi:kbits=5,vbits=4,group=64;\
kivi:kbits=6,vbits=4,group=64;kivi:kbits=5,vbits=5,group=64;kivi:kbits=6,vbits=5,group=64;\
kivi:kbits=4,vbits=3,group=64;kivi:kbits=3,vbits=3,group=64;kivi:kbits=2,vbits=2,group=64;\
kivi:kbits=4,vbits=4,group=32,rope=10000;kivi:kbits=5,vbits=4,group=64,rope=10000;\
kivi:kbits=4,vbits=4,group=64,sink=1;kivi:kbits=5,vbits=4,group=64,sink=1,resid=quant;\
kivi:kbits=8,vbits=4,group=64;kivi:kbits=4,vbits=8,group=64;int5:params=u8;\
kivi:kbits=5,vbits=4,group=64,params=u8;kivi:kbits=5,vbits=4,group=64,rope=10000,params=u8;\
kivi:kbits=6,vbits=5,group=32,params=u8;kivi:kbits=7,vbits=5,group=64,params=u8;\
kivi:kbits=6,vbits=5,group=32,sparse=0.2%,rope=10000,params=u8;\
int4:sparse=1%;int4:virtual=mean;int4:rotate=hadamard,virtual=mean;int4:sparse=1%,virtual=mean;\
int5:virtual=mean;fp8:virtual=mean;kivi:kbits=5,vbits=4,group=64,params=u8,virtual=mean;\
kivi:kbits=6,vbits=5,group=32,params=u8,virtual=mean;\
none:rank=8,learned=on,kbits=6,vbits=5;none:rank=8,learned=on,kbits=5,vbits=5;\
none:rank=8,learned=on,kbits=5,vbits=4;none:rank=8,learned=on,kbits=4,vbits=4;\
none:rank=8,learned=on,kbits=4,vbits=3"
# learned= policies take a basis learned from other sequences (seed 3, never measured on),
# with each layer's weight measured on them and keys as before RoPE (the model's base 10000)
cseed=${CALIB_SEED:-3}
cal=(--calibrate 16 --calibrate-seed "$cseed" --calibrate-rope 10000)
dir=$(mktemp -d /tmp/kvcd-eval-XXXXXX)
sock="$dir/kvcd.sock"
./build/kvcd --foreground --socket "$sock" --pool-size 256M 2>"$dir/kvcd.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for i in $(seq 100); do ./build/kvcctl --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.05; done
args=(--socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" --prefix "$prefix"
      --cont "$cont" --policies "$policies" "${cal[@]}")
./build/kvc-eval "${args[@]}" --md "$dir/table.md" --plot docs/quality.png | tee "$dir/table.txt"
mkdir -p bench/results
./build/kvc-eval "${args[@]}" --json > bench/results/quality.json

# Token selection: one block holds the whole prefix (selection sees it as an engine does at the
# end of prefill), the observation window is the prefix's last 64 queries. Pure quantization
# policies run again on the same blocks, for the frontier at equal memory.
q54="kivi:kbits=5,vbits=4,group=64,params=u8" q65="kivi:kbits=6,vbits=5,group=32,params=u8"
snap="select=snapkv,window=16,budget=adakv"
# the same keeping the prefix's last 48 tokens: chosen on the tuning set for entropy=on below
snap48="select=snapkv,window=48,budget=adakv"
# entropy-coded coefficients, alone and after selection: in both selection runs below
ent_sel="none:rank=8,learned=on,kbits=6,vbits=6,entropy=on;none:rank=8,learned=on,kbits=6,vbits=5,entropy=on;\
none:$snap,keep=80%,rank=8,learned=on,kbits=6,vbits=5,entropy=on;\
none:$snap,keep=75%,rank=8,learned=on,kbits=6,vbits=5,entropy=on;\
none:$snap48,keep=80%,rank=8,learned=on,kbits=6,vbits=5,entropy=on;\
none:$snap48,keep=95%,rank=8,learned=on,kbits=6,vbits=6,entropy=on"
sel="kivi:kbits=6,vbits=5,group=32,sparse=0.2%,rope=10000,params=u8;$q54;\
kivi:kbits=4,vbits=4,group=64,params=u8;kivi:kbits=4,vbits=3,group=64,params=u8;\
kivi:kbits=3,vbits=3,group=64,params=u8;int3:params=u8;kivi:kbits=2,vbits=2,group=64,params=u8;\
int2:params=u8;\
none:select=recent,keep=50%,sink=4;none:select=keynorm,keep=50%;none:select=h2o,keep=50%;\
none:select=h2o,keep=50%,window=32;none:select=h2o,keep=50%,window=32,budget=pyramid;\
none:select=h2o,keep=50%,window=32,budget=adakv;none:select=snapkv,keep=50%,window=16;\
none:select=snapkv,keep=50%,window=16,kernel=7;none:select=snapkv,keep=50%,window=16,budget=pyramid;\
none:$snap,keep=50%;none:select=snapkv,window=16,budget=heads,keep=50%;\
none:select=snapkv,window=16,budget=heads,keep=25%;none:select=recent,keep=50%,sink=4,merge=key;\
none:select=keynorm,keep=50%,merge=key;none:select=h2o,keep=50%,window=32,merge=key;\
none:select=h2o,keep=50%,window=32,merge=value;none:$snap,keep=50%,merge=key;\
none:$snap,keep=50%,merge=value;\
none:$snap,keep=75%;none:$snap,keep=33%;none:$snap,keep=25%;none:$snap,keep=12.5%;\
$q65,$snap,keep=75%;$q54,$snap,keep=75%,resid=quant;$q65,$snap,keep=50%;\
$q54,$snap,keep=50%,resid=quant;kivi:kbits=4,vbits=4,group=64,params=u8,$snap,keep=50%,resid=quant;\
$q65,$snap,keep=25%;$q54,$snap,keep=25%,resid=quant;\
kivi:kbits=4,vbits=3,group=64,params=u8,$snap,keep=25%,resid=quant;\
$q54,$snap,keep=12.5%,resid=quant;\
none:rank=7;none:rank=6;none:rank=4;none:$snap,keep=75%,rank=7;none:rank=8,factors=int8;\
none:rank=6,factors=int8;none:rank=8,energy=95%;none:rank=8,energy=90%;\
none:rank=28,svd=layer;none:rank=24,svd=layer;none:rank=24,svd=layer,factors=int8;\
none:rank=64,tensor=tucker,energy=99%;none:rank=64,tensor=tucker,energy=98%;\
none:rank=64,tensor=tucker,energy=95%;\
none:$snap,keep=50%,cold=8;none:$snap,keep=50%,cold=4;none:$snap,keep=25%,cold=4;\
none:$snap,keep=50%,cold=2;$q54,$snap,keep=50%,resid=quant,cold=2;\
none:minicache=3;none:minicache=3,retain=20%;none:minicache=3,slerp=0;none:minicache=1;\
none:$snap,keep=75%,rank=8,learned=on,kbits=6,vbits=5;none:$snap,keep=80%,rank=8,learned=on,kbits=5,vbits=5;\
none:$snap,keep=75%,rank=8,learned=on,kbits=5,vbits=5;none:$snap,keep=85%,rank=8,learned=on,kbits=5,vbits=4;\
none:$snap,keep=66%,rank=8,learned=on,kbits=5,vbits=4;none:$snap,keep=50%,rank=8,learned=on,kbits=5,vbits=5;\
$ent_sel"
sargs=(--socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" --prefix "$prefix"
       --cont "$cont" --chunk "$prefix" --window 64 --policies "$sel" "${cal[@]}")
./build/kvc-eval "${sargs[@]}" --md "$dir/select.md" --plot docs/quality_select.png |
	tee "$dir/select.txt"
./build/kvc-eval "${sargs[@]}" --json > bench/results/quality_select.json

# The report set: the frontier's policies again on sequences drawn with another seed. The
# policies above were chosen looking at the tuning set (seed 1); these sequences never were.
rseed=${REPORT_SEED:-2}
rep="none;int8;int6;kivi:kbits=7,vbits=5,group=64,params=u8;kivi:kbits=6,vbits=5,group=32,params=u8;\
kivi:kbits=6,vbits=5,group=32,sparse=0.2%,rope=10000,params=u8;$q54;kivi:kbits=4,vbits=4,group=32;\
$q54,virtual=mean;kivi:kbits=6,vbits=5,group=32,params=u8,virtual=mean;\
none:rank=8,learned=on,kbits=6,vbits=5;none:rank=8,learned=on,kbits=5,vbits=5;\
none:rank=8,learned=on,kbits=5,vbits=4;none:rank=8,learned=on,kbits=4,vbits=4;\
none:rank=8,learned=on,kbits=4,vbits=3;none:rank=8,learned=on,kbits=6,vbits=6,entropy=on;\
none:rank=8,learned=on,kbits=6,vbits=5,entropy=on;none:rank=8,learned=on,kbits=5,vbits=5,entropy=on"
rsel="$q65,$snap,keep=75%;$q54,$snap,keep=75%,resid=quant;$q54,$snap,keep=50%,resid=quant;\
none:$snap,keep=50%;none:$snap,keep=50%,cold=4;$q54,$snap,keep=50%,resid=quant,cold=2;\
none:rank=8,learned=on,kbits=5,vbits=5;none:rank=8,learned=on,kbits=5,vbits=4;\
none:$snap,keep=75%,rank=8,learned=on,kbits=6,vbits=5;none:$snap,keep=80%,rank=8,learned=on,kbits=5,vbits=5;\
none:$snap,keep=75%,rank=8,learned=on,kbits=5,vbits=5;none:$snap,keep=85%,rank=8,learned=on,kbits=5,vbits=4;\
$ent_sel"
rargs=(--socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" --prefix "$prefix"
       --cont "$cont" --seed "$rseed")
./build/kvc-eval "${rargs[@]}" --policies "$rep" "${cal[@]}" --md "$dir/report.md" |
	tee "$dir/report.txt"
./build/kvc-eval "${rargs[@]}" --chunk "$prefix" --window 64 --policies "$rsel" "${cal[@]}" \
	--md "$dir/report_select.md" | tee "$dir/report_select.txt"
# Selection at the right granularity: the prefix in chunks of 64 tokens, each chunk selecting
# on its own (with the prefix's window); the same chunks stored raw and RECOMPRESSed as one
# chain once the prefill is done (--defer); and one block holding the whole prefix.
gran="none:$snap,keep=50%;none:$snap,keep=25%;$q65,$snap,keep=75%;\
$q54,$snap,keep=50%,resid=quant;none:$snap,keep=50%,cold=4"
for set in tuning:1 report:$rseed; do
	name=${set%%:*} sd=${set#*:}
	gargs=(--socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" --prefix "$prefix"
	       --cont "$cont" --seed "$sd" --window 64 --policies "$gran" --json)
	./build/kvc-eval "${gargs[@]}" --chunk 64 > "$dir/gran_${name}_chunk.json"
	./build/kvc-eval "${gargs[@]}" --chunk 64 --defer > "$dir/gran_${name}_defer.json"
	./build/kvc-eval "${gargs[@]}" --chunk "$prefix" > "$dir/gran_${name}_whole.json"
done
/usr/bin/python3 - "$dir" > "$dir/gran.md" <<'PY'
import json, sys
d = sys.argv[1]
for name, title in (("tuning", "tuning set (seed 1)"), ("report", "report set")):
    runs = [json.load(open(f"{d}/gran_{name}_{m}.json"))["policies"]
            for m in ("chunk", "defer", "whole")]
    print(f"\n{title}:\n")
    print("| policy | per chunk | deferred (RECOMPRESS) | one block |")
    print("|---|---|---|---|")
    for row in zip(*runs):
        cells = [f"{r['compression_ratio']:.2f}x, {r['ppl_ratio']:.3f}" if "error" not in r
                 else "error: " + r["error"] for r in row]
        print(f"| `{row[0]['policy']}` | " + " | ".join(cells) + " |")
PY

# Learned projections: a basis per namespace learned from other sequences (seed 3, never
# measured on), against the per-block SVD that stores its factors in every block, in 64-token
# chunks and in one block, on the tuning and the report sets.
learn="int8;none:rank=8,factors=int8;none:rank=8,learned=on,factors=int8;\
none:rank=7,factors=int8;none:rank=7,learned=on,factors=int8;none:rank=7;none:rank=7,learned=on;\
none:rank=6;none:rank=6,learned=on;none:rank=4;none:rank=4,learned=on;\
none:$snap,keep=50%,rank=8,factors=int8;none:$snap,keep=50%,rank=8,learned=on,factors=int8"
for set in tuning:1 report:$rseed; do
	name=${set%%:*} sd=${set#*:}
	largs=(--socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" --prefix "$prefix"
	       --cont "$cont" --seed "$sd" --window 64 --policies "$learn" --json
	       --calibrate 16 --calibrate-seed "$cseed")
	./build/kvc-eval "${largs[@]}" --chunk 64 > "$dir/learn_${name}_chunk.json"
	./build/kvc-eval "${largs[@]}" --chunk "$prefix" > "$dir/learn_${name}_whole.json"
done
/usr/bin/python3 - "$dir" > "$dir/learn.md" <<'PY'
import json, sys
d = sys.argv[1]
runs = [json.load(open(f"{d}/learn_{s}_{c}.json"))
        for s in ("tuning", "report") for c in ("chunk", "whole")]
print(f"Basis: {runs[0]['basis']['bytes']} bytes per namespace, learned from "
      f"{runs[0]['basis']['calibration_seqs']} sequences of seed {runs[0]['basis']['seed']}.\n")
print("| policy | tuning, 64-token chunks | tuning, one block | report, 64-token chunks "
      "| report, one block |")
print("|---|---|---|---|---|")
for row in zip(*[r["policies"] for r in runs]):
    cells = [f"{r['compression_ratio']:.2f}x, {r['ppl_ratio']:.3f}" if "error" not in r
             else "error: " + r["error"] for r in row]
    print(f"| `{row[0]['policy']}` | " + " | ".join(cells) + " |")
PY

# Coded coefficients: learned=on with kbits/vbits against KIVI at about the same bytes, in
# chunks and in one block, on both sets; then what the weights and RoPE each bring.
coded="kivi:kbits=6,vbits=5,group=32,params=u8;$q54;kivi:kbits=4,vbits=4,group=64,params=u8;\
kivi:kbits=4,vbits=3,group=64,params=u8;none:rank=8,learned=on,kbits=6,vbits=5;\
none:rank=8,learned=on,kbits=5,vbits=5;none:rank=8,learned=on,kbits=5,vbits=4;\
none:rank=8,learned=on,kbits=4,vbits=4;none:rank=8,learned=on,kbits=4,vbits=3;\
none:rank=8,learned=on,kbits=6,vbits=6,entropy=on;none:rank=8,learned=on,kbits=6,vbits=5,entropy=on;\
none:rank=8,learned=on,kbits=5,vbits=5,entropy=on;none:rank=8,learned=on,kbits=5,vbits=4,entropy=on"
for set in tuning:1 report:$rseed; do
	name=${set%%:*} sd=${set#*:}
	cargs=(--socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" --prefix "$prefix"
	       --cont "$cont" --seed "$sd" --policies "$coded" --json "${cal[@]}")
	./build/kvc-eval "${cargs[@]}" --chunk 64 > "$dir/coded_${name}_chunk.json"
	./build/kvc-eval "${cargs[@]}" --chunk "$prefix" > "$dir/coded_${name}_whole.json"
done
abl="none:rank=8,learned=on,kbits=5,vbits=5;none:rank=8,learned=on,kbits=5,vbits=4"
for v in "1 10000" "1 0" "0 10000" "0 0"; do
	set -- $v
	./build/kvc-eval --socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" \
		--prefix "$prefix" --cont "$cont" --seed "$rseed" --policies "$abl" --json \
		--calibrate 16 --calibrate-seed "$cseed" --calibrate-weights "$1" \
		--calibrate-rope "$2" > "$dir/abl_$1_$2.json"
done
# The issue's targets on more draws: a perplexity ratio over 16 sequences moves by about 0.01
# from one draw to the next, so one report set can meet a target by luck. These policies
# again on twelve more sets of 16 sequences, one block holding the prefix.
draws=${DRAW_SEEDS:-5 7 9 11 13 15 17 19 21 23 25 27}
tgt="none:rank=8,learned=on,kbits=6,vbits=6,entropy=on;\
none:$snap48,keep=95%,rank=8,learned=on,kbits=6,vbits=6,entropy=on;\
none:$snap,keep=80%,rank=8,learned=on,kbits=6,vbits=5,entropy=on;\
none:$snap48,keep=80%,rank=8,learned=on,kbits=6,vbits=5,entropy=on"
for sd in $draws; do
	./build/kvc-eval --socket "$sock" --model "$model" --seqs "$seqs" --temp "$temp" \
		--prefix "$prefix" --cont "$cont" --seed "$sd" --chunk "$prefix" --window 64 \
		--policies "$tgt" --json "${cal[@]}" > "$dir/draw_$sd.json"
done
/usr/bin/python3 - "$dir" $draws > "$dir/draws.md" <<'PY'
import json, sys
d, seeds = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f"{d}/draw_{s}.json"))["policies"] for s in seeds]
goal = [(3.0, 1.03), (3.0, 1.03), (4.0, 1.10), (4.0, 1.10)]
print("| policy | target | met | perplexity ratio: mean, worst | compression: least |")
print("|---|---|---|---|---|")
for i, (r0, p0) in enumerate(goal):
    rows = [run[i] for run in runs]
    met = sum(r["compression_ratio"] >= r0 and r["ppl_ratio"] <= p0 for r in rows)
    ppl = [r["ppl_ratio"] for r in rows]
    print(f"| `{rows[0]['policy']}` | {p0} at {r0:g}x | {met} of {len(rows)} | "
          f"{sum(ppl) / len(ppl):.3f}, {max(ppl):.3f} | "
          f"{min(r['compression_ratio'] for r in rows):.3f}x |")
print()
print("Each draw (compression, perplexity ratio), by seed:\n")
print("| seed | " + " | ".join(f"policy {i + 1}" for i in range(len(goal))) + " |")
print("|---|" + "---|" * len(goal))
for s, run in zip(seeds, runs):
    print(f"| {s} | " + " | ".join(f"{r['compression_ratio']:.3f}x, {r['ppl_ratio']:.3f}"
                                   for r in run) + " |")
PY
/usr/bin/python3 - "$dir" > "$dir/coded.md" <<'PY'
import json, sys
d = sys.argv[1]
runs = [json.load(open(f"{d}/coded_{s}_{c}.json"))
        for s in ("tuning", "report") for c in ("chunk", "whole")]
w = runs[0]["basis"]["weights"]
print("Weights kvc-eval measured on the calibration sequences (mean KL per unit of noise "
      "variance), K then V:\n")
print("| layer | " + " | ".join(str(i) for i in range(len(w) // 2)) + " |")
print("|---|" + "---|" * (len(w) // 2))
print("| K | " + " | ".join(f"{x:.3g}" for x in w[0::2]) + " |")
print("| V | " + " | ".join(f"{x:.3g}" for x in w[1::2]) + " |")
print()
print("| policy | tuning, 64-token chunks | tuning, one block | report, 64-token chunks "
      "| report, one block |")
print("|---|---|---|---|---|")
for row in zip(*[r["policies"] for r in runs]):
    cells = [f"{r['compression_ratio']:.2f}x, {r['ppl_ratio']:.3f} (KL {r['kl']:.4f})"
             if "error" not in r else "error: " + r["error"] for r in row]
    print(f"| `{row[0]['policy']}` | " + " | ".join(cells) + " |")
print()
print("Report set, 64-token chunks, with and without the weights and RoPE "
      "(compression, perplexity ratio, KL):\n")
print("| policy | weights and RoPE | weights only | RoPE only | neither |")
print("|---|---|---|---|---|")
abl = [json.load(open(f"{d}/abl_{v}.json"))["policies"]
       for v in ("1_10000", "1_0", "0_10000", "0_0")]
for row in zip(*abl):
    cells = [f"{r['compression_ratio']:.2f}x, {r['ppl_ratio']:.3f}, {r['kl']:.4f}"
             if "error" not in r else "error: " + r["error"] for r in row]
    print(f"| `{row[0]['policy']}` | " + " | ".join(cells) + " |")
PY

{
	cat <<HEAD
# Quality of kvcd's policies on a real model

Generated by \`make eval\` (tools/eval.sh, kvc-eval) on $(date -u +%Y-%m-%d): do not edit by hand.

Model: stories260K (llama2.c, 5 layers, 8 query heads, 4 KV heads, head_dim 8). $seqs sequences
sampled from BOS at temperature $temp; for each, the KV of the first $prefix tokens (f16, in
chunks of 64 tokens) is stored through kvcd under the policy, fetched back, and the next $cont
tokens are teacher-forced on top of it. Compared with the same run on the exact f16 prefix:

- **compression**: bytes the engine sent / bytes the pool holds (codes, scales, zeros,
  exact tokens, headers), from kvcd's per-namespace counters;
- **perplexity ratio**: exp(mean NLL with the policy - mean NLL exact) over the continuation;
- **top-1**: how often the most likely next token is the exact run's;
- **KL**: mean KL(exact || policy) of the next-token distributions;
- **attention-output error**: relative L2 error of each layer's attention output.

Policy strings are what \`kvcctl policy\` and \`[namespace] policy\` take. A group longer than
head_dim spans the heads of a token's row (int defaults to group 64, so on this model int
groups are whole 32-channel rows; \`group=8\` keeps them per head).

HEAD
	cat "$dir/table.md"
	cat <<'TAIL'

![perplexity ratio against compression ratio](quality.png)

Reference points measured with an independent implementation on this model (8 sequences,
same settings): int8 (1.8x) 1.00; int6 group 32 (2.5x) 1.03; int4 group 8 (2.0x) 1.21;
int4 group 32 (3.2x) 1.56; KIVI-4 group 32 (3.2x) 1.32; int2 about 10.

`params=u8` stores each group's scale and zero as one byte each against a 12-byte reference
per unit (zeros in 255 steps of the span of the unit's zeros, scales in 1/16 powers of two
below the largest) instead of two f16. On this model a group is a 32-value row or a 64-token
key channel, so the f16 pair costs 1 or 0.5 bits per value: halving it is what moves KIVI 5/4
from about 3.0x to about 3.2x at nearly the same quality.

`virtual=mean` moves each channel's mean over a unit's per-token quantized rows into one
virtual token, kept in the engine's dtype and added back on FETCH, so a channel that sits far
from zero no longer stretches every token's range (KIVI's keys, quantized per channel, do not
need it and go without). It costs one row per unit per block (here 64 bytes per 64-token
unit of 32 channels, 3-4% of an int4 block), and is compared above with Hadamard rotation
and sparse outliers, which spend their bytes on the same outliers in other ways. On this
model it helps every per-token codec a little at about the same bytes, and most where the
rotation alone hurt; with 16-token chunks of a large model the row would cost four times as
much per token.
TAIL
	cat <<SEL

## Token selection, alone and composed with quantization

Policies with \`select=\` keep a share of each (layer, KV head)'s tokens (\`keep\`), the
sequence's first \`sink\` and the block's last \`window\` always; the engine attends over what
FETCH returns and masks the rest. Here one block holds the whole $prefix-token prefix, so the
choice is made over all of it as an engine would at the end of prefill. Scores: \`recent\`
(StreamingLLM), \`keynorm\`, \`h2o\` (attention accumulated over the prefix, sent with the
STORE), \`snapkv\` (the attention of the prefix's last 64 queries, sent with the STORE, with
their log-sum-exp so it is their true softmax). Budgets: \`uniform\`, \`pyramid\` (PyramidKV),
\`adakv\` (Ada-KV, floor 20%), \`heads\` (DuoAttention's head roles, told apart per block from
the same attention: the heads that together send under 10% of the layer's attention beyond
the sinks and the window keep just those, the others share the rest; on this model every
head sends 97% or more of it beyond them, so no head is a streaming head and \`heads\` keeps
what \`uniform\` keeps). \`merge=key\` folds each dropped token's value into the kept
token of most similar key by attention mass and records the mass as an attention bias;
\`merge=value\` does the same without the bias. \`rank=R\` keeps each (layer, KV head)'s K and
V as a truncated SVD of rank R (LAPACKE), \`factors=int8\` its factors as int8 rows with a
scale each, \`energy=E\` each rank as the smallest keeping E of the squared singular values,
\`svd=layer\` one SVD per layer across its heads, \`tensor=tucker\` each layer's K and V as
one [tokens][heads][head_dim] tensor (higher-order SVD: a core and one factor per mode, every
mode's rank by energy); \`cold=B\` keeps the tokens selection
drops as B-bit ints instead of losing them;
\`minicache=L\` merges pairs of adjacent layers from
layer L on (MiniCache). The pure quantization policies are measured
again on the same blocks so the frontier compares them at equal memory.

SEL
	cat "$dir/select.md"
	cat <<'SELTAIL'

![perplexity ratio against compression ratio, with token selection](quality_select.png)

Baselines measured with an independent implementation on this model (8 sequences, 50% of the
tokens kept): random 23, StreamingLLM 24, key-norm 104, H2O 2.9, SnapKV 4.7, H2O+PyramidKV 2.4,
H2O+Ada-KV 2.7.

What the numbers say on this model:
- SnapKV with an observation window that sees the whole prefix (the last 64 queries, kept
  window 16, no pooling) is the best selector; Ada-KV's head-wise budgets improve it further.
  SnapKV's long-context pooling (kernel 7) costs a factor of several here: with head_dim 8
  and 256 tokens, neighbours are not clusters.
- H2O needs a recent window (32 tokens): without one it is the baseline's 2.9.
- PyramidKV's falling budgets hurt: this model's deep layers are not sparser than its first.
- Merging does not pay off here. The attention-mass bias of \`merge=key\` over-weights the kept
  token for queries that did not attend its group; \`merge=value\` is close to plain dropping
  but never better, and \`merge=key\` costs 2 bytes per kept token. It helps only the weak
  selectors (StreamingLLM, key-norm), which are far behind anyway.
- Low-rank does not pay off on this model: with head_dim 8 a per-head SVD saves little and
  loses a whole direction of 8 (rank 7: 1.1x for a perplexity ratio of about 4.6; rank 6: 1.3x
  for about 13, the independent baseline's 13). Ranks chosen by energy (95%: 1.07x for about
  3.6) and one SVD across a layer's heads (rank 28 of 32: 1.01x for about 2.3) do a little
  better per byte, still far from the frontier. int8 factors do not change that: at full
  rank they cost 12 bytes per 8-value row (int8 plus a scale) against int8 quantization's
  ~9, so they sit behind it. It is there for models whose heads are larger and whose keys
  are closer to low-rank. The Tucker form (each layer's K and V as a 3-way tensor) does a
  little better per byte than both SVDs (99% of each mode's energy: about 1.0x for about
  1.75, against 2.27 for one SVD per layer at rank 28; 98%: 1.07x for about 2.7, against
  3.6 for per-head ranks at 95% energy), but it too only compresses by cutting ranks, and
  on this model every cut direction costs a lot: it stays far behind quantization.
- Demoting dropped tokens (`cold=B`) rather than dropping them brings SnapKV+Ada-KV at 50%
  from a ratio of about 1.41 (1.98x) to about 1.013 with 4-bit cold tokens (1.44x), but the
  raw kept half makes it dearer than plain quantization at that quality (int8: 1.78x at about
  1.004). 2-bit cold rows are per-token int2 groups of 8 values here and lose most of what
  they keep.
- MiniCache on the last two layers (layers 3 and 4 share one direction per token, SLERP at
  t = 0.6, 5% of tokens kept unmerged) saves 14% of the memory for a perplexity ratio of
  about 3.4, the independent baseline's figure; t = 0 (layer 4 takes layer 3's directions
  with its own norms) is better here, and merging from layer 1 is far worse. Cross-layer
  merging does not pay off on this model: quantization gives 2.6x for 1.03.
- Below 3.2x pure quantization wins; from about 3.5x on, SnapKV+Ada-KV at 75% or 50% on top of
  KIVI beats every pure quantization policy at the same memory, and above 6x nothing else
  is usable. Coded coefficients over a learned basis (below) move both: without selection
  they beat KIVI at every ratio measured, and SnapKV+Ada-KV at 75-80% on top of them gives
  3.7-4.1x for 1.076-1.102.
SELTAIL
	cat <<REP

## The report set: sequences no choice was made on

Every table above is the tuning set: $seqs sequences drawn with seed 1, the ones the policies
and their parameters were chosen on. Below, the frontier's policies on $seqs sequences drawn
with seed $rseed, which were never looked at before this run (the same model, temperature,
prefix and continuation); first in chunks of 64 tokens, then with one block holding the
whole prefix as the selection table has it.

REP
	cat "$dir/report.md"
	echo
	cat "$dir/report_select.md"
	cat <<'GRAN'

## Selection at the right granularity: per chunk, deferred, one block

An engine stores its prompt in chunks as its prefill goes (here 64 tokens). Selecting each
chunk on its own, even with the observation window of the whole prefix (the last 64 queries,
sent with every chunk), gives every chunk the same share and keeps each chunk's last
`window` tokens as if they were recent. Deferred selection stores the chunks raw and, once
the prefill is done, sends one RECOMPRESS naming the chain with the window's queries: kvcd
selects over the whole chain with one budget, sinks at its start and the window at its end,
and rewrites each chunk with its share (kvc_recompress, `llm_kvc_recompress` in
tools/engine.c, `kvc-eval --defer`). Each cell: compression, perplexity ratio.
GRAN
	cat "$dir/gran.md"
	cat <<'GRANTAIL'

Deferred selection keeps exactly the tokens one block holding the prefix keeps (the unit and
integration tests check this token for token), so without quantization the two columns are
the same. With KIVI or cold tokens they differ a little: those quantize per chunk (KIVI's
key groups, the cold rows' groups), not across the prefix.
GRANTAIL
	cat <<LEARN

## Learned projections: one basis per namespace (\`learned=on\`)

\`kvcctl calibrate\` (here \`kvc-eval --calibrate 16\`: the prefixes of 16 sequences drawn
with seed $cseed, stored raw, then deleted) learns for each (layer, KV head) the leading
eigenvectors of K's and of V's rows over the calibration tokens, at 100% energy here, so
that \`rank=\` alone sets how many each block keeps. A block under \`learned=on\` stores only
each kept row's coefficients over them (in f16, or with \`factors=int8\` as int8 rows with an
f32 scale); the basis is stored once, and its bytes are not in these ratios. Against it, the
per-block SVD of the same rank, which stores its factors in every block. Each cell:
compression, perplexity ratio; neither set was used for calibration.

LEARN
	cat "$dir/learn.md"
	cat <<'LEARNTAIL'

What the numbers say on this model (head_dim 8):
- The basis pays off where the per-block factors are a large part of a block: at full rank
  with int8 coefficients (a learned rotation before a per-row int8 quantization) it is both
  smaller and closer to exact than the per-block SVD's int8 factors (1.32x at 1.000-1.001
  against 1.17x in chunks and 1.28x in one block at 1.003), and under SnapKV+Ada-KV at 50%,
  whose 64-token chunks keep only about 32 rows per head, it stores 2.60x where the per-block
  SVD stores 2.10x, at the same perplexity ratio. Plain int8 on the raw rows still stores
  more per quality point (1.77x at 1.001-1.004): the f32 scale of each 8-value row costs it.
- At cut ranks the basis saves 10-13% of the bytes in 64-token chunks and 3% in one block,
  but loses more than it saves: a block's own SVD is the best rank-r fit of that block, the
  basis only the best on average, and at rank 7 the perplexity ratio is 5.6 against 2.5 (in
  chunks) and 4.6 (in one block). As the selection table shows, every cut direction costs
  this model a lot; larger heads whose keys are closer to low-rank are where a learned basis
  can cut ranks cheaply.
LEARNTAIL
	cat <<CODED

## Coded coefficients: bits where an error costs most (\`learned=on\` with \`kbits\`, \`vbits\`)

Transform coding over the namespace's basis. The basis decorrelates each (layer, KV head)'s
rows and records how much of the calibration rows' energy each direction holds; the engine
tells CALIBRATE what an error in each layer's K and V costs it (\`kvc_calibrate_model\`,
\`kvcctl calibrate --weights\`; here kvc-eval adds noise of a twentieth of the RMS to one
layer's K or V over the calibration prefixes and takes the continuation's KL divergence per
unit of noise variance) and the model's RoPE base, so that keys are learned and coded as they
were before RoPE, each block turned back by its own positions. A block then spends kbits per
K coefficient and vbits per V coefficient on average, K's and V's together, bit by bit where
weight x variance x 4^-bits falls most (each bit quarters a direction's error), 0 to 8 bits
per direction: each direction's codes over the block's tokens, on a range of two int8 points
on a grid set by its calibration variance (clipped where that costs less error), the bits of
each direction as a nibble in the block. The basis's bytes are not in the ratios.

CODED
	cat "$dir/coded.md"
	cat <<'CODEDTAIL'
What the numbers say on this model:
- At equal bytes the coded coefficients beat KIVI by a wide margin: in 64-token chunks 3.22x
  for a perplexity ratio of 1.064 (tuning) and 1.068 (report) against KIVI 5/4's 3.23x for
  1.168 and 1.181; 4.03x for 1.236-1.255 against KIVI 4/3's 1.84-1.94. At 2.68x they reach
  1.016-1.019, where KIVI 6/5 gives 1.033-1.035 at 2.63x.
- The engine's weights carry most of it. This model's first layers cost far more per unit of
  error (layer 0's V 39 against layer 4's 0.25), so spreading the bits by them cuts the KL of
  the same bytes to about a third (report, 5/4: 0.060 with weights against 0.172 without,
  RoPE kept in both); learning and coding the keys as before RoPE adds a little more (0.060
  against 0.069, weights kept in both).
- One block holding the whole 256-token prefix pays less for the ranges (3.10x against 2.92x
  at 5/5) but codes each direction over all its tokens on one range: per byte it is a little
  worse than 64-token chunks at 4.5 bits and about the same at 5 (report: 3.10x for 1.034).
- Composed with SnapKV+Ada-KV over the whole prefix (the selection table), keeping 75% and
  coding at 5/5 gives 4.09x for 1.102 on the tuning set and 4.08x for 1.090 on the report set,
  where the best at 4x or more was 1.44 (4.23x, tuning) and 1.57 (5.42x, report), and KIVI
  5/4 with SnapKV at 75% gives 3.67x for 1.165-1.196.
- `entropy=on` range codes the same coefficients, on the step of their bits with no range
  to fit. Fixed-width codes spend bits on a range that must hold every value of the block;
  entropy-coded ones spend them on the values that occur. At the same bits a block is 15-18%
  smaller for a larger error (5/5 in one block: 3.70x for 1.065-1.069 against 3.10x for
  1.034-1.045); with one bit more it is better for about the same bytes (6/6: 3.00-3.01x for
  1.022 on both sets; 6/5: 3.32x for 1.038-1.041, where fixed 5/4 gives 3.43x for
  1.089-1.106; in 64-token chunks 6/5 gives 3.14x for 1.038-1.041, fixed 5/4 3.22x for
  1.064-1.068). Its error no longer depends on how many tokens share a range, so chunks and
  one block differ only in their headers. With SnapKV+Ada-KV keeping 80% and 6/5, 4.09x
  for 1.091 (tuning) and 1.075 (report).
- Keeping the prefix's last 48 tokens rather than 16 (`window=48`, chosen on the tuning set)
  is what selection needed here: SnapKV+Ada-KV 80% with entropy-coded 6/5 goes from 1.091 to
  1.065 (tuning) at 4.09x, and 95% with 6/6 gives 3.16x for 1.023 on both sets.
- Issue targets on the report set: 1.03 at 3x is reached (6/6 in one block: 3.01x for 1.022,
  a thin margin in size; with SnapKV+Ada-KV 95% and `window=48`: 3.16x for 1.023), and so is
  1.10 at 4x (SnapKV+Ada-KV 80%, `window=48`, 6/5: 4.09x for 1.068). Without entropy coding
  the best were 1.034 at 3.10x and 1.090 at 4.08x. How steady they are over other draws is
  below.
CODEDTAIL
	cat <<'DRAWS'

## The targets on more draws

Over 16 sequences a perplexity ratio moves by about 0.01 from one draw to the next, so a
single report set can meet a target by luck. The policies that meet the issue's targets on the
report set (1.03 at 3x, 1.10 at 4x), each in one block holding the prefix, again on twelve
more sets of 16 sequences (seeds 5 to 27, odd; the basis as above). `window=48` was chosen on
the tuning set, after these policies' first runs with `window=16`.

DRAWS
	cat "$dir/draws.md"
	cat <<'DRAWSTAIL'

- 1.10 at 4x holds on every draw with `window=48` (mean 1.066, worst 1.081), and not with
  `window=16` (mean 1.088, two draws above 1.10).
- 1.03 at 3x holds on average (means 1.020 and 1.023, worst 1.030 and 1.032). 6/6 without
  selection misses on size three times (2.98-2.997x, a ratio that depends on how compressible
  each draw's values are); SnapKV+Ada-KV 95% has room in size (3.13x at least) and misses on
  quality twice, by at most 0.002.
DRAWSTAIL
} > docs/quality.md
echo "wrote docs/quality.md, docs/quality.png, docs/quality_select.png," \
     "bench/results/quality.json, bench/results/quality_select.json"
