#!/bin/sh
# gpu-bundle.sh DIR - what make gpu-check runs, built here, in one folder that runs on a machine
# with a CUDA driver but without Debian's packages or a compiler that could build kvcd there.
#
#   DIR/bin        kvcd, kvcctl, kvcbench, kvccodec-bench (the GPU codec kernels embedded)
#   DIR/tests      the GPU suites (tests/gpu_*) and the host walk of the kernels' grid
#   DIR/lib        libkvcclient.so.0 (for the Python binding), and every shared library they
#                  load that a Debian package gave them, copied
#                  from the package's installed file; the C library's own are left to the
#                  machine (the binaries ask for no newer glibc than Ubuntu 22.04's)
#   DIR/MANIFEST   each library with the Debian package and version it came from
#   DIR/gpu-check.sh
# The folder must stay under the 64 MiB a device run carries; this script fails if it is not.
set -eu
out=${1:?usage: gpu-bundle.sh DIR}
build=${BUILD:-build}

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/lib"
cp "$build/kvcd" "$build/kvcctl" "$build/kvccodec-bench" "$build/kvcbench" "$out/bin/"
find "$build/tests" -maxdepth 1 -type f \( -name 'gpu_*' -o -name unit_gpucodec \) \
	! -name '*.d' -exec cp {} "$out/tests/" \;
cp tools/gpu-check.sh "$out/"
cp "$build/libkvcclient.so" "$out/lib/libkvcclient.so.0" # for the Python binding's tests
: > "$out/MANIFEST"
for f in "$out"/bin/* "$out"/tests/*; do ldd "$f"; done | awk '$3 ~ /^\// { print $3 }' | sort -u |
while read -r lib; do
	case ${lib##*/} in
	libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libresolv.so.* | \
	ld-linux*) continue ;;
	esac
	cp -L "$lib" "$out/lib/"
	# merged /usr: dpkg may know the file under /usr/lib or /lib
	pkg=$( (dpkg -S "$lib" || dpkg -S "/usr$lib" || dpkg -S "${lib#/usr}") 2>/dev/null |
		head -1 | cut -d: -f1)
	ver=$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || echo '?')
	echo "${lib##*/} ${pkg:-?} $ver" >> "$out/MANIFEST"
done
kib=$(du -sk "$out" | cut -f1)
if [ "$kib" -gt 65536 ]; then
	echo "gpu-bundle: $out is $kib KiB, over the 64 MiB a device run carries" >&2
	exit 1
fi
echo "gpu-bundle: $out, $kib KiB, $(wc -l < "$out/MANIFEST") libraries; on the GPU machine:"
echo "    make gpu-check GPU_BUNDLE=$out"
