# kvcd - one GNU Makefile. `make run` and `make test` set up everything on a fresh Debian 12.
#
#   make            build/kvcd, build/kvcctl, build/kvcbench, build/libkvcclient.{so,a}
#   make deps       install the Debian packages (as root)
#   make run        deps + build + kvcd in the foreground on its embedded defaults
#   make test       deps + build + the whole Criterion suite
#   make asan       the suite under AddressSanitizer and UBSan (build-asan/)
#   make bench      kvcbench scenarios, results in bench/results/ (BENCH=full: all of them)
#   make bench-docs docs/performance.md from bench/results/
#   make gpu-bundle everything the GPU checks run, in one folder (GPU_BUNDLE, build/gpu-bundle)
#   make gpu-check  the GPU suites and kvccodec-bench gpu from that folder, on a GPU machine
#   make eval       kvc-eval of every policy on the real model: docs/quality.md
#   make docs       docs/policies.md from the policy table
#   make format     clang-format the tree (make test runs make format-check)
#   make fuzz       each libFuzzer harness FUZZ_S (60) seconds under ASan+UBSan
#   make chaos      the chaos suite, CHAOS_S (600) seconds against the ASan+UBSan kvcd
#   make install    PREFIX=/usr/local, DESTDIR; make uninstall removes it all again

CC      ?= gcc
BUILD   ?= build
PREFIX  ?= /usr/local
# the one place: kvc.h, kvc_version(), kvcd --version, the .pc and Python's __version__
VERSION := 0.9.0
PKGS    := libxxhash hwloc inih libsystemd libmicrohttpd hiredis
CFLAGS  ?= -O2 -g
# project flags: kept even when CFLAGS is given on the command line (make asan does)
KFLAGS  := -std=gnu11 -Wall -Wextra -Wshadow -Wno-missing-field-initializers -pthread \
	   -fno-strict-aliasing -ffp-contract=off -D_GNU_SOURCE -MMD -MP
ifeq ($(CI),true)
KFLAGS  += -Werror
endif
DEPS_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPS_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lnuma
TEST_LIBS   = $(shell pkg-config --libs criterion 2>/dev/null || echo -lcriterion)

DEB_PKGS := build-essential pkg-config libnuma-dev libhwloc-dev hwloc libcriterion-dev \
	    libsystemd-dev libxxhash-dev libinih-dev gnuplot-nox jq redis-server libhiredis-dev \
	    liblapacke-dev libopenblas-dev clang-format-14 clang-14 libclang-rt-14-dev \
	    libmicrohttpd-dev prometheus python3-numpy python3-torch python3-pytest man-db

DAEMON_SRC := daemon/config.c daemon/os_linux.c daemon/topo.c daemon/alloc.c daemon/pool.c \
	      daemon/store.c daemon/basis.c daemon/session.c daemon/worker.c daemon/ops.c \
	      daemon/stats.c daemon/sum.c \
	      daemon/metrics.c daemon/log.c daemon/remote.c daemon/gpu.c daemon/gpu/rt.c \
	      daemon/gpu/pool.c \
	      daemon/gpu/fatbin.c libclient/metrics.c
# libkvccodec.a: the block codecs, a library of their own that depends on proto/ alone
CODEC_SRC  := $(addprefix daemon/codec/,isa.c convert.c quant.c units.c codec.c policy.c \
	      scores.c sparse.c lowrank.c minicache.c summary.c quality.c rc.c)
CLIENT_SRC := libclient/client.c libclient/keys.c libclient/metrics.c libclient/gpu.c
TESTS      := $(patsubst tests/%.c,%,$(wildcard tests/unit_*.c tests/it_*.c tests/stress_*.c \
	      tests/gpu_*.c))
FUZZERS    := policy config request decode # tests/fuzz/fuzz_*.c

DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
CODEC_OBJ  := $(CODEC_SRC:%.c=$(BUILD)/%.o)
CODEC_LIB  := $(BUILD)/libkvccodec.a
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/pic/%.o)
INC        := -Iproto -Ilibclient/include -I$(BUILD)/include -Idaemon -Idaemon/codec -Idaemon/gpu
VERSION_H  := $(BUILD)/include/kvc_version.h

all: $(BUILD)/kvcd $(BUILD)/kvcctl $(BUILD)/kvcbench $(BUILD)/libkvcclient.so \
     $(BUILD)/libkvcclient.a $(BUILD)/kvcclient.pc $(BUILD)/kvc-llama $(BUILD)/kvc-eval \
     $(BUILD)/kvccodec-bench $(BUILD)/kvc-chaos

# The GPU codec kernels (daemon/gpu/codec.cu): a fatbin for sm_80, sm_90 and sm_100 plus PTX,
# embedded by fatbin.c, when nvcc is at $(CUDA_HOME); without it kvcd builds and says the GPU
# codecs are left out. No fused multiply-add and IEEE division: the kernels must round as the
# CPU codecs do.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
HAVE_NVCC := $(shell test -x $(NVCC) && echo yes)
NVFLAGS   := -O3 --fmad=false -prec-div=true -prec-sqrt=true -Idaemon/gpu \
	     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	     -gencode 'arch=compute_100,code=[sm_100,compute_100]'
ifeq ($(HAVE_NVCC),yes)
FATBIN    := $(BUILD)/gpu/kvcg.fatbin
$(FATBIN): daemon/gpu/codec.cu daemon/gpu/kern.h daemon/codec/gpujob.h daemon/codec/elem.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -fatbin -o $@ $<
$(BUILD)/daemon/gpu/fatbin.o: $(FATBIN)
$(BUILD)/daemon/gpu/fatbin.o: KFLAGS += -DKVCG_FATBIN='"$(FATBIN)"'
endif

# The codec sees proto/ and its own folder only: no daemon header, no package flags.
$(BUILD)/daemon/codec/%.o: daemon/codec/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) -Iproto -c $< -o $@

$(CODEC_LIB): $(CODEC_OBJ)
	rm -f $@
	ar rcs $@ $^

# Written only when VERSION changes, so that nothing rebuilds for nothing.
$(VERSION_H): Makefile
	@mkdir -p $(dir $@)
	@v='$(VERSION)'; maj=$${v%%.*}; rest=$${v#*.}; min=$${rest%%.*}; pat=$${rest#*.}; \
	printf '/* generated from the Makefile'"'"'s VERSION: do not edit */\n#define KVC_VERSION_MAJOR %s\n#define KVC_VERSION_MINOR %s\n#define KVC_VERSION_PATCH %s\n#define KVC_VERSION_STRING "%s"\n' \
		$$maj $$min $$pat $$v > $@.tmp; cmp -s $@.tmp $@ && rm $@.tmp || mv $@.tmp $@

$(BUILD)/%.o: %.c | $(VERSION_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) $(DEPS_CFLAGS) $(INC) -c $< -o $@

$(BUILD)/pic/%.o: %.c | $(VERSION_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) -fPIC $(DEPS_CFLAGS) $(INC) -c $< -o $@

$(BUILD)/kvcd: $(BUILD)/daemon/main.o $(DAEMON_OBJ) $(CODEC_LIB)
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ $(DEPS_LIBS) -lm

$(BUILD)/libkvcclient.so: $(CLIENT_OBJ) libclient/libkvcclient.map
	$(CC) $(CFLAGS) $(KFLAGS) -shared -Wl,-soname,libkvcclient.so.0 \
		-Wl,--version-script=libclient/libkvcclient.map -o $@ $(CLIENT_OBJ) -lxxhash
	ln -sf libkvcclient.so $(BUILD)/libkvcclient.so.0

$(BUILD)/libkvcclient.a: $(CLIENT_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/kvcclient.pc: libclient/kvcclient.pc.in
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

# Tools link the static library: they use only kvc.h, like any engine would.
$(BUILD)/kvcctl: $(BUILD)/tools/kvcctl.o $(BUILD)/libkvcclient.a
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ -lxxhash

# kvc-llama and kvc-eval: a small real engine (tools/llama.c) and its kvcd side (engine.c).
ENGINE_OBJ := $(BUILD)/tools/llama.o $(BUILD)/tools/engine.o

# kvcbench: the engine (the prefix scenario) and its peers: Redis through hiredis, a minimal
# socket server.
$(BUILD)/kvcbench: $(BUILD)/tools/kvcbench.o $(BUILD)/tools/peers.o $(BUILD)/tools/workload.o $(ENGINE_OBJ) \
		   $(BUILD)/libkvcclient.a $(BUILD)/daemon/gpu/rt.o $(BUILD)/daemon/gpu/fatbin.o
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ -lhiredis -lxxhash -lm
$(BUILD)/tools/kvcbench.o: KFLAGS += -Idaemon/gpu

# kvccodec-bench: the codec in-process, no daemon; it links libkvccodec.a openly, and the GPU
# codec runtime for its gpu command.
$(BUILD)/tools/kvccodec-bench.o: tools/kvccodec-bench.c | $(VERSION_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) -Iproto -Idaemon/codec -Idaemon/gpu -I$(BUILD)/include -c $< -o $@
$(BUILD)/kvccodec-bench: $(BUILD)/tools/kvccodec-bench.o $(CODEC_LIB) $(BUILD)/daemon/gpu/rt.o \
			 $(BUILD)/daemon/gpu/fatbin.o
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ -lm

$(BUILD)/kvc-chaos: $(BUILD)/tools/kvc-chaos.o $(BUILD)/libkvcclient.a
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ -lxxhash

$(BUILD)/kvc-llama: $(BUILD)/tools/kvc-llama.o $(ENGINE_OBJ) $(BUILD)/libkvcclient.a
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ -lxxhash -lm

$(BUILD)/kvc-eval: $(BUILD)/tools/kvc-eval.o $(ENGINE_OBJ) $(BUILD)/libkvcclient.a
	$(CC) $(CFLAGS) $(KFLAGS) -o $@ $^ -lxxhash -lm

# Tools use the public API only, as any engine would.
$(BUILD)/tools/%.o: tools/%.c | $(VERSION_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) -Ilibclient/include -I$(BUILD)/include -Iproto -c $< -o $@

# Tests: unit tests link the daemon objects; it_* tests drive a real kvcd through libkvcclient.
$(BUILD)/tests/%: tests/%.c tests/t_util.h $(DAEMON_OBJ) $(CODEC_LIB) $(BUILD)/libkvcclient.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) $(DEPS_CFLAGS) $(INC) -o $@ $< $(DAEMON_OBJ) $(CODEC_LIB) \
		$(BUILD)/libkvcclient.a $(DEPS_LIBS) $(TEST_LIBS) -lm

# unit_gpuabi checks the CUDA ABI kvcd and libkvcclient declare against the toolkit's cuda.h
$(BUILD)/tests/unit_gpuabi: KFLAGS += $(if $(wildcard $(CUDA_HOME)/include/cuda.h),-I$(CUDA_HOME)/include)

# it_llama drives the engine in-process too
$(BUILD)/tests/it_llama: tests/it_llama.c tests/t_util.h tools/llama.h $(ENGINE_OBJ) $(DAEMON_OBJ) \
			 $(CODEC_LIB) $(BUILD)/libkvcclient.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) $(DEPS_CFLAGS) $(INC) -Itools -o $@ $< $(ENGINE_OBJ) $(DAEMON_OBJ) \
		$(CODEC_LIB) $(BUILD)/libkvcclient.a $(DEPS_LIBS) $(TEST_LIBS) -lm

# unit_workload tests kvcbench's traces and references (tools/workload.c)
$(BUILD)/tests/unit_workload: tests/unit_workload.c tests/t_util.h tools/workload.h \
			      $(BUILD)/tools/workload.o $(DAEMON_OBJ) $(CODEC_LIB) $(BUILD)/libkvcclient.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(KFLAGS) $(DEPS_CFLAGS) $(INC) -Itools -o $@ $< $(BUILD)/tools/workload.o \
		$(DAEMON_OBJ) $(CODEC_LIB) $(BUILD)/libkvcclient.a $(DEPS_LIBS) $(TEST_LIBS) -lm

# The previous release's ABI as a program built then sees it: its header, and a link-time
# stand-in of its library with its symbol versions (tests/abi/). At run time the program
# loads this tree's library from beside it; it_abi runs it against a real kvcd.
$(BUILD)/abi/libkvcclient.so: tests/abi/kvc-0.2.h tests/abi/kvc-0.2.map
	@mkdir -p $(dir $@)
	grep -o 'kvc_[a-z0-9_]*(' tests/abi/kvc-0.2.h | sort -u | \
		sed -e 's/^/void /' -e 's/($$/(void) {}/' > $(BUILD)/abi/stub.c
	$(CC) -shared -fPIC -Wl,-soname,libkvcclient.so.0 -Wl,--version-script=tests/abi/kvc-0.2.map \
		-o $@ $(BUILD)/abi/stub.c

$(BUILD)/abi-0.2-client: tests/abi/old_client.c $(BUILD)/abi/libkvcclient.so $(BUILD)/libkvcclient.so
	$(CC) $(CFLAGS) $(KFLAGS) -Itests/abi -o $@ $< -L$(BUILD)/abi -lkvcclient \
		-Wl,-rpath,'$$ORIGIN'

test-bin: all $(TESTS:%=$(BUILD)/tests/%) $(BUILD)/abi-0.2-client $(BUILD)/ubsan/kvcd \
	  $(FUZZERS:%=$(BUILD)/fuzz-replay/fuzz_%)

# Fuzzers (make fuzz): clang's libFuzzer under ASan and UBSan, each FUZZ_S seconds from its
# seed corpus in tests/fuzz/seeds/. make test replays the seeds (and every input a fuzzer
# once crashed on, kept there) through the same harnesses, built by $(CC) without libFuzzer.
FUZZ_S ?= 60
FUZZ_CFLAGS := -g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/seedblock.h $(DAEMON_OBJ) $(CODEC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter-out -MMD -MP,$(KFLAGS)) $(DEPS_CFLAGS) $(INC) -fsanitize=fuzzer \
		-o $@ $(filter %.c %.o %.a,$^) $(DEPS_LIBS) -lm

$(BUILD)/fuzz-replay/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/seedblock.h \
			     $(DAEMON_OBJ) $(CODEC_LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter-out -MMD -MP,$(KFLAGS)) $(DEPS_CFLAGS) $(INC) -o $@ \
		$(filter %.c %.o %.a,$^) $(DEPS_LIBS) -lm

$(BUILD)/fuzz-mkseeds: tests/fuzz/mkseeds.c tests/fuzz/seedblock.h $(CODEC_LIB)
	$(CC) $(CFLAGS) $(KFLAGS) -Iproto -Idaemon/codec -o $@ $(filter %.c %.a,$^) -lm

fuzz: deps
	$(MAKE) BUILD=build-fuzz CC=clang-14 CFLAGS="$(FUZZ_CFLAGS)" \
		$(FUZZERS:%=build-fuzz/fuzz/fuzz_%)
	@set -e; for f in $(FUZZERS); do mkdir -p build-fuzz/corpus/$$f; \
		echo "== fuzz_$$f ($(FUZZ_S) s, seeds in tests/fuzz/seeds/$$f)"; \
		build-fuzz/fuzz/fuzz_$$f -max_total_time=$(FUZZ_S) -print_final_stats=1 \
			-artifact_prefix=build-fuzz/ build-fuzz/corpus/$$f tests/fuzz/seeds/$$f; \
	done

# kvcd with -fsanitize=alignment, for it_align: any misaligned element access aborts it.
$(BUILD)/ubsan/kvcd: $(DAEMON_SRC) $(CODEC_SRC) daemon/main.c daemon/*.h daemon/codec/*.h proto/*.h
	$(MAKE) --no-print-directory BUILD=$(BUILD)/ubsan \
		CFLAGS="-O1 -g -fsanitize=alignment -fno-sanitize-recover=alignment" $(BUILD)/ubsan/kvcd

# The tree follows .clang-format (clang-format 14, Debian 12's); tests/abi/ keeps the previous
# release's header as it was.
CLANG_FORMAT ?= clang-format-14
FORMAT_FILES = $(filter-out tests/abi/kvc-0.2.h,$(shell git ls-files '*.c' '*.h' 2>/dev/null))
format-check:
	@$(CLANG_FORMAT) --dry-run --Werror $(FORMAT_FILES) && echo "format-check: the tree follows .clang-format"

format:
	$(CLANG_FORMAT) -i $(FORMAT_FILES)

# Each suite runs with 2 jobs; it_* tests start their own kvcd on a private socket.
test: deps
	$(MAKE) format-check
	$(MAKE) test-bin
	@# the shared library exports the public API and nothing else
	@bad=$$(readelf --dyn-syms --wide $(BUILD)/libkvcclient.so | awk '$$5=="GLOBAL" && $$7!="UND" && $$8 !~ /^(kvc_|KVC_)/ {print $$8}'); \
	n=$$(readelf --dyn-syms --wide $(BUILD)/libkvcclient.so | awk '$$7!="UND" && $$8 ~ /^kvc_/' | wc -l); \
	if [ -n "$$bad" ] || [ "$$n" -lt 20 ]; then echo "libkvcclient.so exports: $$bad ($$n kvc_ symbols)"; exit 1; fi; \
	echo "libkvcclient.so exports $$n kvc_* symbols and nothing else"
	@# the policy grammar in the docs is the parser's own table
	@./$(BUILD)/kvccodec-bench policies | cmp -s - docs/policies.md || \
		{ echo "docs/policies.md differs from the policy table: run make docs"; exit 1; }
	@set -e; fail=0; for t in $(TESTS); do \
		echo "== $$t"; \
		KVCD_BIN=$(CURDIR)/$(BUILD)/kvcd KVCD_UBSAN_BIN=$(CURDIR)/$(BUILD)/ubsan/kvcd \
			$(BUILD)/tests/$$t --jobs 2 || fail=1; \
	done; \
	for f in $(FUZZERS); do $(BUILD)/fuzz-replay/fuzz_$$f tests/fuzz/seeds/$$f || fail=1; done; \
	echo "== python (libclient/python/tests)"; \
	KVCD_BIN=$(CURDIR)/$(BUILD)/kvcd KVCD_LIB=$(CURDIR)/$(BUILD)/libkvcclient.so \
		/usr/bin/python3 -m pytest -q -p no:cacheprovider libclient/python/tests || fail=1; \
	if [ $$fail = 0 ]; then echo "all test suites passed"; else echo "some test suites FAILED"; exit 1; fi

ASAN_CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	       -fno-sanitize-recover=undefined

asan:
	$(MAKE) BUILD=build-asan CC=gcc CFLAGS="$(ASAN_CFLAGS)" test-bin
	@set -e; for t in $(TESTS); do echo "== $$t (asan)"; \
		KVCD_BIN=$(CURDIR)/build-asan/kvcd ASAN_OPTIONS=detect_leaks=1 build-asan/tests/$$t --jobs 1; done

# The chaos suite: tools/kvc-chaos against the ASan+UBSan kvcd, CHAOS_S seconds over its five
# scenarios (make test runs each for two seconds, tests/it_chaos.c).
CHAOS_S ?= 600
chaos: deps all
	$(MAKE) BUILD=build-asan CC=gcc CFLAGS="$(ASAN_CFLAGS)" build-asan/kvcd
	ASAN_OPTIONS=detect_leaks=1 ./$(BUILD)/kvc-chaos --kvcd $(CURDIR)/build-asan/kvcd \
		--seconds $(CHAOS_S)

# Documents generated from the code.
docs: all
	./$(BUILD)/kvccodec-bench policies > docs/policies.md

run: deps all
	./$(BUILD)/kvcd --foreground

# The GPU checks (tools/gpu-check.sh): gpu-bundle builds here everything they run, with the
# Debian libraries it loads, into one folder; gpu-check runs from that folder on a machine with
# a CUDA device and compiles nothing, so it has no prerequisites.
GPU_BUNDLE ?= $(BUILD)/gpu-bundle
gpu-bundle: all $(BUILD)/tests/unit_gpucodec $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/gpu_*.c))
	BUILD=$(BUILD) tools/gpu-bundle.sh $(GPU_BUNDLE)

gpu-check:
	tools/gpu-check.sh $(GPU_BUNDLE)

bench: all
	./tools/bench.sh

# docs/performance.md and its plots from bench/results (what make bench wrote)
bench-docs:
	./tools/bench_report.sh

# docs/quality.md and docs/quality.png: every policy family measured by kvc-eval
eval: deps all
	./tools/eval.sh

deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install:$$missing"; exit 1; fi; \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing; \
	fi

# make install [PREFIX=/usr/local] [DESTDIR=]: what is installed is also what make uninstall
# removes. The .pc and the unit name the install-time PREFIX.
BINS       := kvcd kvcctl kvcbench kvc-llama kvc-eval kvccodec-bench kvc-chaos
MANS       := man/kvcd.8 man/kvcctl.1 man/kvcd.conf.5 man/kvc.3
DOCS       := README.md docs/architecture.md docs/reliability.md docs/policies.md \
	      docs/quality.md docs/performance.md docs/kvcd.conf.example \
	      libclient/examples/prefix_cache.c
PY_FILES   := $(wildcard libclient/python/kvcd/*.py)
I          := $(DESTDIR)$(PREFIX)
PYDIR      := $(I)/lib/python3/dist-packages/kvcd

# tests pass INSTALL_DEPS= to install what a sanitizer build made, as it is
INSTALL_DEPS ?= all
install: $(INSTALL_DEPS)
	install -d $(I)/bin $(I)/lib/pkgconfig $(I)/include $(I)/lib/systemd/system \
		$(I)/share/doc/kvcd $(PYDIR) $(addprefix $(I)/share/man/man,1 3 5 8)
	install -m 755 $(addprefix $(BUILD)/,$(BINS)) $(I)/bin/
	install -m 644 $(BUILD)/libkvcclient.a $(I)/lib/
	install -m 755 $(BUILD)/libkvcclient.so $(I)/lib/libkvcclient.so.0
	ln -sf libkvcclient.so.0 $(I)/lib/libkvcclient.so
	install -m 644 libclient/include/kvc.h $(VERSION_H) $(I)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' libclient/kvcclient.pc.in \
		> $(I)/lib/pkgconfig/kvcclient.pc
	sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|' -e 's|/usr/local/share/|$(PREFIX)/share/|' \
		kvcd.service > $(I)/lib/systemd/system/kvcd.service
	for m in $(MANS); do install -m 644 $$m $(I)/share/man/man$${m##*.}/; done
	install -m 644 $(DOCS) $(I)/share/doc/kvcd/
	install -m 644 $(PY_FILES) $(PYDIR)/
	printf 'LIBDIR = "%s"\n' '$(PREFIX)/lib' > $(PYDIR)/_paths.py

uninstall:
	rm -f $(addprefix $(I)/bin/,$(BINS)) $(I)/lib/libkvcclient.a $(I)/lib/libkvcclient.so \
		$(I)/lib/libkvcclient.so.0 $(I)/include/kvc.h $(I)/include/kvc_version.h \
		$(I)/lib/pkgconfig/kvcclient.pc $(I)/lib/systemd/system/kvcd.service
	for m in $(MANS); do rm -f $(I)/share/man/man$${m##*.}/$${m#man/}; done
	rm -rf $(I)/share/doc/kvcd $(PYDIR)

clean:
	rm -rf build build-asan

.PHONY: all test test-bin asan run bench bench-docs eval gpu-bundle gpu-check deps install uninstall clean docs format format-check \
	fuzz chaos
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
