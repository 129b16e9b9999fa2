/* old_client.c - a program built against the previous release's header (kvc-0.2.h, symbol
 * version KVC_0.1) and run against the library of this tree: every call it makes, the ones
 * whose structs have since taken a size included, must still work. Run by it_abi.
 *
 *   abi-0.2-client --socket PATH     exits 0 and prints "abi 0.2 ok", else says what broke
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvc-0.2.h"

#define CHECK(cond, ...)                                                 \
	do {                                                             \
		if (!(cond)) {                                           \
			fprintf(stderr, "abi-0.2-client: " __VA_ARGS__); \
			fputc('\n', stderr);                             \
			exit(1);                                         \
		}                                                        \
	} while (0)

int main(int argc, char **argv)
{
	struct kvc_layout l = { .dtype = KVC_F16,
				.layers = 2,
				.kv_heads = 2,
				.head_dim = 8,
				.tokens = 4 },
			  back;
	struct kvc_attach_opts o;
	struct kvc_block_info bi[4];
	struct kvc_client_info ci[4];
	struct kvc_key key;
	struct kvc_stats st;
	int32_t tok[4] = { 1, 2, 3, 4 };
	size_t n = kvc_layout_bytes(&l);
	kvc_client *c;
	unsigned char *stg;
	int r;

	CHECK(argc == 3 && !strcmp(argv[1], "--socket"), "usage: --socket PATH");
	kvc_attach_opts_init(&o);
	o.socket = argv[2];
	o.ns = "abi-old";
	CHECK(!kvc_attach(&o, &c), "attach");
	stg = kvc_staging(c, NULL);
	for (size_t i = 0; i < n; i++)
		stg[i] = (unsigned char)(i * 7 + 1);
	CHECK(!kvc_key_chain(NULL, o.ns, tok, 4, &key), "key");
	CHECK(!kvc_store(c, &key, &l, 0), "store");
	memset(stg, 0, n);
	CHECK(!kvc_fetch(c, &key, 0, n, &back) && back.tokens == 4, "fetch");
	for (size_t i = 0; i < n; i++)
		CHECK(stg[i] == (unsigned char)(i * 7 + 1), "fetched byte %zu", i);
	/* the structs of 0.2, filled by the calls of 0.2 */
	memset(&st, 0xa5, sizeof(st));
	CHECK(!kvc_stats(c, &st), "stats");
	CHECK(st.blocks == 1 && st.clients == 1 && st.nnodes >= 1, "stats: %llu blocks, %u clients",
	      (unsigned long long)st.blocks, st.clients);
	CHECK(st.op[KVC_OP_STORE].count == 1 && st.op[KVC_OP_FETCH].count == 1,
	      "stats.op: %llu stores, %llu fetches", (unsigned long long)st.op[KVC_OP_STORE].count,
	      (unsigned long long)st.op[KVC_OP_FETCH].count);
	CHECK(st.nns >= 1 && st.nns <= 32, "stats.nns %u", st.nns);
	for (r = 0; r < (int)st.nns && strcmp(st.ns[r].name, "abi-old"); r++)
		;
	CHECK(r < (int)st.nns && st.ns[r].blocks == 1, "stats.ns: no 'abi-old' with one block");
	r = kvc_list(c, 0, bi, 4);
	CHECK(r == 1 && !memcmp(&bi[0].key, &key, sizeof(key)) && bi[0].layout.tokens == 4,
	      "list: %d", r);
	r = kvc_clients(c, ci, 4);
	CHECK(r == 1 && ci[0].pid == (int32_t)getpid() && !strcmp(ci[0].ns, "abi-old"),
	      "clients: %d", r);
	CHECK(kvc_version() >> 16 == 0 && (kvc_version() >> 8 & 0xff) >= 2, "version %#x",
	      kvc_version());
	CHECK(!kvc_delete(c, &key), "delete");
	kvc_detach(c);
	printf("abi 0.2 ok (library %u.%u.%u)\n", kvc_version() >> 16, kvc_version() >> 8 & 0xff,
	       kvc_version() & 0xff);
	return 0;
}
