#!/bin/sh
# gpu-check.sh BUNDLE - the GPU checks, run from a folder tools/gpu-bundle.sh made; compiles
# nothing. For a machine with a CUDA device (make gpu-check GPU_BUNDLE=BUNDLE):
#   1. the host walk of the kernels' grid and the GPU suites (tests/gpu_*): the codec
#      kernels against the CPU codec, and GPU staging through a real kvcd between processes
#   2. kvcd started on the machine as it is (mlock, hugepages or NUMA may be weaker than on
#      Debian: kvcd says what it could not do), its STATS with the devices it found
#   3. kvcbench gpu (GPU staging through that kvcd) and kvccodec-bench gpu (the codec kernels),
#      each against the device's own copies
# Writes bench/results/gpu-check.log, gpu-tests.txt, gpu-kvcd-stats.json and gpu.json, and
# docs/gpu.md from them when a device was measured; with $OUT set (a device run) copies them
# there too. Exits non-zero when a test fails; a machine without a device only skips.
set -u
bundle=$(cd "${1:?usage: gpu-check.sh BUNDLE}" && pwd)
res=bench/results
mkdir -p "$res" docs
export LD_LIBRARY_PATH="$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KVCD_BIN="$bundle/bin/kvcd" # the suites that start a kvcd start the bundle's
log=$res/gpu-check.log
fail=0
: > "$log"

say() { echo "$*" | tee -a "$log"; }

say "== gpu-check $(date -u +%FT%TZ) on $(uname -n)"
command -v nvidia-smi > /dev/null && nvidia-smi -L 2>&1 | tee -a "$log"

# A sandboxed machine may not let kvcd lock its pools in RAM: then every kvcd here (the
# suites', the Python tests', and the one measured below) runs with --memlock try, which
# says so in its log, beside the bundle's other programs.
ulimit -l unlimited 2> /dev/null
bin=$bundle/bin
if [ "$(ulimit -l)" != unlimited ]; then
	bin=$(mktemp -d /tmp/kvcd-gpucheck-bin.XXXXXX)
	for f in "$bundle"/bin/*; do ln -s "$f" "$bin/"; done
	rm "$bin/kvcd"
	printf '#!/bin/sh\nexec "%s" --memlock try "$@"\n' "$bundle/bin/kvcd" > "$bin/kvcd"
	chmod +x "$bin/kvcd"
	export KVCD_BIN="$bin/kvcd"
	say "RLIMIT_MEMLOCK is $(ulimit -l) KiB here: kvcd runs with --memlock try"
fi

say "== the GPU suites"
: > "$res/gpu-tests.txt"
for t in "$bundle"/tests/*; do
	"$t" --verbose > "$res/gpu-test.out" 2>&1
	rc=$?
	cat "$res/gpu-test.out" >> "$res/gpu-tests.txt"
	grep -E '^\[(SKIP|FAIL|====)\]' "$res/gpu-test.out" | tee -a "$log"
	[ $rc -eq 0 ] || { say "FAILED: ${t##*/} (exit $rc)"; fail=1; }
done
rm -f "$res/gpu-test.out"
if python3 -c 'import torch, numpy, pytest' 2> /dev/null; then
	say "== the Python binding's GPU tests"
	KVCD_LIB="$bundle/lib/libkvcclient.so.0" python3 -m pytest -q -p no:cacheprovider \
		libclient/python/tests/test_gpu.py >> "$res/gpu-tests.txt" 2>&1
	rc=$?
	tail -1 "$res/gpu-tests.txt" | tee -a "$log"
	[ $rc -eq 0 ] || { say "FAILED: the Python GPU tests (exit $rc)"; fail=1; }
fi

say "== kvcd on this machine"
tmp=$(mktemp -d /tmp/kvcd-gpucheck.XXXXXX)
"$bin/kvcd" --foreground --socket "$tmp/kvcd.sock" --pool-size 1G --gpu-pool-size 1G \
	--state-dir "$tmp/state" --log-level info > "$tmp/kvcd.log" 2>&1 &
pid=$!
i=0
until "$bundle/bin/kvcctl" --socket "$tmp/kvcd.sock" ping > /dev/null 2>&1; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 $pid 2> /dev/null; then
		say "FAILED: kvcd did not start"
		fail=1
		break
	fi
	sleep 0.1
done
say "== kvcbench gpu: GPU staging through kvcd against the device's own copies"
"$bundle/bin/kvcbench" --socket "$tmp/kvcd.sock" gpu --json > "$res/gpu-tier.json" 2>> "$log"
rc=$?
cat "$res/gpu-tier.json" >> "$log"
case $rc in
0 | 3) ;;
*) say "FAILED: kvcbench gpu (exit $rc)"; fail=1 ;;
esac
"$bundle/bin/kvcctl" --socket "$tmp/kvcd.sock" stats --json > "$res/gpu-kvcd-stats.json" 2>&1
kill $pid 2> /dev/null
wait $pid 2> /dev/null
cat "$tmp/kvcd.log" >> "$log"
grep -iE 'gpu|mlock|numa|hugepage' "$tmp/kvcd.log"
rm -rf "$tmp"

say "== kvccodec-bench gpu"
"$bundle/bin/kvccodec-bench" gpu --json > "$res/gpu.json" 2>> "$log"
rc=$?
cat "$res/gpu.json" >> "$log"
measured=0
case $rc in
0) measured=1 ;;
3) say "no CUDA device: nothing measured" ;;
*) say "FAILED: kvccodec-bench gpu (exit $rc)"; fail=1 ;;
esac

if [ $measured -eq 1 ]; then
	python3 - "$res/gpu.json" "$res/gpu-tests.txt" "$res/gpu-tier.json" > docs/gpu.md << 'PY'
import json, re, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tests = open(sys.argv[2]).read()
tier = [json.loads(l) for l in open(sys.argv[3]) if l.strip().startswith("{")]
synth = re.findall(r"Synthesis: (.*)", tests)
r0 = rows[0]
print("# The GPU tier on a device\n")
print("Written by `make gpu-check` (tools/gpu-check.sh) from `bench/results/gpu.json`; "
      "do not edit by hand.\n")
print(f"Device: {r0['device']}. Block: {r0['bytes_in']} bytes of f16 "
      "(32 layers x 8 KV heads x 128 x 256 tokens).\n")
print("## Tests\n")
for s in synth:
    print(f"- {s.strip()}")
print("\n## Copies the device makes, measured in the same run\n")
print(f"| D2D (cuMemcpyDtoD) | H2D from pinned | D2H to pinned |\n|---|---|---|")
print(f"| {r0['d2d_gbps']:.1f} GB/s | {r0['h2d_gbps']:.1f} GB/s | {r0['d2h_gbps']:.1f} GB/s |\n")
print("## Codec kernels (target: encode and decode at 50% of D2D or more)\n")
print("| policy | ratio | encode GB/s | of D2D | decode GB/s | of D2D | PCIe bytes saved "
      "per demotion | same bytes as the CPU |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    saved = 100.0 * r['pcie_bytes_saved'] / r['bytes_in']
    print(f"| `{r['policy']}` | {r['ratio']:.2f}x | {r['encode_gbps']:.1f} | "
          f"{100 * r['encode_vs_d2d']:.0f}% | {r['decode_gbps']:.1f} | "
          f"{100 * r['decode_vs_d2d']:.0f}% | {saved:.0f}% | "
          f"{'yes' if r['same_bytes_as_cpu'] else 'NO'} |")
if tier:
    t = tier[0]
    print("\n## GPU staging through kvcd (kvcbench gpu), against the same copies\n")
    print("| | GB/s | of the device's own copy (target 90%) |\n|---|---|---|")
    print(f"| FETCH into GPU staging, raw | {t['fetch_gpu_gbps']:.1f} | "
          f"{100 * t['fetch_vs_h2d']:.0f}% of H2D ({t['ref_h2d_gbps']:.1f}) |")
    print(f"| STORE from GPU staging, raw | {t['store_gpu_gbps']:.1f} | "
          f"{100 * t['store_vs_d2h']:.0f}% of D2H ({t['ref_d2h_gbps']:.1f}) |")
    if t.get('fetch_pool_gbps') is not None:
        print(f"| FETCH from the GPU pool's copy, raw | {t['fetch_pool_gbps']:.1f} | "
              f"{100 * t['pool_vs_d2d']:.0f}% of D2D ({t['ref_d2d_gbps']:.1f}; target 80%) |")
    print(f"| FETCH, int8 decoded on the GPU | {t['fetch_int8_gbps']:.1f} | |")
    print(f"| STORE, int8 encoded on the GPU | {t['store_int8_gbps']:.1f} | |")
    print(f"\nA {t['block_bytes']}-byte block took {t['int8_stored_bytes']} pool bytes "
          f"under int8 against {t['raw_stored_bytes']} raw: the PCIe bytes of its copy.")
print("\nGB/s count the raw block's bytes per second. The raw FETCH into GPU staging is one "
      "that misses the GPU pool (the block was stored from host staging); the int8 FETCH "
      "decodes the copy its GPU STORE left in the pool. The GPU tier's suites (GPU staging "
      "between processes through kvcd, the GPU pool) are in the tests above.")
PY
	say "docs/gpu.md written"
fi

if [ -n "${OUT:-}" ]; then
	cp "$log" "$res/gpu-tests.txt" "$res/gpu-kvcd-stats.json" "$res/gpu.json" \
		"$res/gpu-tier.json" "$OUT/" \
		2> /dev/null
	[ $measured -eq 1 ] && cp docs/gpu.md "$OUT/"
fi
[ "$bin" = "$bundle/bin" ] || rm -rf "$bin"
say "== gpu-check: $([ $fail -eq 0 ] && echo passed || echo FAILED)"
exit $fail
