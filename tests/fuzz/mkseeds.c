/* mkseeds.c - writes the seed corpora of the fuzzers (tests/fuzz/seeds/NAME/): valid inputs
 * of each kind, from which the fuzzers mutate. Run by hand when the formats change:
 *   make build/fuzz-mkseeds && build/fuzz-mkseeds tests/fuzz/seeds */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "codec.h"
#include "kvcp.h"
#include "seedblock.h"

static const char *root;

static void put(const char *kind, const char *name, const void *p, size_t n)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, kind);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/%s", root, kind, name);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n)
		exit(1);
	fclose(f);
}

static const char *const policies[] = {
	"none",
	"int8",
	"int4:group=32,sink=4",
	"int2:group=16",
	"fp8",
	"kivi:kbits=2,vbits=4,group=32",
	"int4:rotate=hadamard",
	"int8:sparse=0.02",
	"int4:hibits=8,hipct=10",
	"none:select=keynorm,keep=50%",
	"int8:select=recent,keep=25%,window=4,cold=4",
	"none:select=keynorm,keep=50%,merge=key",
	"none:rank=8",
	"none:rank=8,factors=int8,svd=layer",
	"none:minicache=1",
	"none:summary=quest",
	"int8:summary=reps8",
	"none:rank=32,learned=on",
	"none:select=keynorm,keep=50%,rank=8,learned=on,factors=int8",
	"none:kbits=5,vbits=4,rank=8,learned=on",
	"none:select=keynorm,keep=50%,kbits=3,vbits=2,rank=8,learned=on",
	"none:kbits=5,vbits=4,rank=8,learned=on,entropy=on",
	"none:select=keynorm,keep=50%,kbits=3,vbits=2,rank=8,learned=on,entropy=on",
	"kivi:kbits=4,vbits=4,group=16", /* whole groups of keys: the fused KIVI decoder */
};

int main(int argc, char **argv)
{
	struct kvcp_layout l = fuzz_layout;
	uint16_t *src = fuzz_block();
	uint64_t blen = 0;
	void *basis = src ? fuzz_basis(src, &blen) : NULL;

	if (argc != 2 || !src || !basis)
		return 2;
	root = argv[1];
	mkdir(root, 0755);
	for (unsigned i = 0; i < sizeof(policies) / sizeof(policies[0]); i++) {
		struct kvcd_aux aux = { .basis = basis, .basis_len = blen };
		struct kvcd_plan plan;
		struct kvcd_policy p;
		char why[128], name[32];
		uint64_t n;
		void *dst;

		put("policy", (snprintf(name, sizeof(name), "p%02u", i), name), policies[i],
		    strlen(policies[i]));
		if (kvcd_policy_parse(policies[i], &p, why, sizeof(why))) {
			fprintf(stderr, "%s: %s\n", policies[i], why);
			return 1;
		}
		if (p.kind == KVCD_CODEC_NONE && !kvcd_policy_sel(&p))
			continue; /* raw */
		/* learned= blocks name the basis fuzz_decode decodes with */
		if (kvcd_codec_plan(KVCD_ISA_SCALAR, &p, &l, 0, src, NULL, &aux, &plan)) {
			kvcd_plan_fini(&plan);
			continue;
		}
		n = plan.stored;
		dst = aligned_alloc(64, (n + 63) & ~63ull);
		if (kvcd_codec_write(KVCD_ISA_SCALAR, &plan, src, NULL, &aux, dst) == 0) {
			snprintf(name, sizeof(name), "b%02u", i);
			put("decode", name, dst, n);
		}
		kvcd_plan_fini(&plan);
		free(dst);
	}
	static const char conf[] =
		"[kvcd]\npool_size = 64M\nworkers = 2\nstaging_size = 1M\nstaging_max = 8M\n"
		"max_pins = 10\nadmin_uids = 0\nhigh_watermark = 90\nlow_watermark = 80\n"
		"policy = int8\n[namespace a]\nallow_uids = 0, 1\nallow_gids = 0\nquota = 16M\n"
		"policy = kivi:kbits=2,vbits=2\n";
	put("config", "full", conf, sizeof(conf) - 1);
	put("config", "bad", "[kvcd]\nworkers = 0\n[namespace \n", 26);
	/* requests: entries, then the staging bytes they name */
	struct __attribute__((packed)) {
		uint8_t count; /* entries - 1 */
		struct kvcp_sqe e[4];
		uint8_t staging[4096];
	} r;
	struct kvcp_layout sl = {
		.dtype = KVCP_F16, .layers = 1, .kv_heads = 1, .head_dim = 16, .tokens = 8
	};

	memset(&r, 0, sizeof(r));
	r.count = 3;
	for (int i = 0; i < 4; i++) {
		r.e[i].user_data = (uint64_t)i + 1;
		r.e[i].key.lo = 7;
		r.e[i].layout = sl;
	}
	r.e[0].opcode = KVCP_OP_STORE;
	r.e[0].len = kvcp_layout_bytes(&sl);
	r.e[1].opcode = KVCP_OP_FETCH;
	r.e[1].off = 1024;
	r.e[1].len = 1024;
	r.e[2].opcode = KVCP_OP_LOOKUP;
	r.e[2].off = 2048;
	r.e[2].len = 32;
	r.e[3].opcode = KVCP_OP_PIN;
	memcpy(r.staging + 2048, &r.e[0].key, 16);
	memcpy(r.staging + 2064, &r.e[0].key, 16);
	put("request", "store_fetch_lookup_pin", &r, sizeof(r));
	memset(&r.e[1], 0, sizeof(r.e[1]));
	r.e[1].opcode = KVCP_OP_POLICY;
	r.e[1].len = 4;
	r.e[1].off = 3072;
	memcpy(r.staging + 3072, "int8", 4);
	r.e[2].opcode = KVCP_OP_STATS;
	r.e[2].flags = KVCP_SQE_F_SCRATCH;
	r.e[2].len = sizeof(struct kvcp_stats);
	put("request", "policy_stats", &r, sizeof(r));
	/* CALIBRATE descriptions kvcd must refuse before it starts learning: a wrong magic, an
	 * odd offset, a length that is not the weights' */
	struct kvcp_calibrate cal = { .magic = KVCP_CALIBRATE_MAGIC ^ 1, .layers = 1 };

	memset(&r, 0, sizeof(r));
	r.count = 2;
	for (int i = 0; i < 3; i++) {
		r.e[i].opcode = KVCP_OP_CALIBRATE;
		r.e[i].user_data = (uint64_t)i + 1;
		r.e[i].arg = KVCP_CALIBRATE_ARG(0, 99);
		r.e[i].len = sizeof(cal) + 8;
	}
	r.e[1].off = 2;
	r.e[2].len = sizeof(cal) + 4;
	memcpy(r.staging, &cal, sizeof(cal));
	put("request", "calibrate_refused", &r, sizeof(r));
	return 0;
}
