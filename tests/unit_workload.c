/* unit_workload.c - the prefix-cache traces of kvcbench workload (tools/workload.c): the
 * generator is reproducible, the file round-trips, chained keys share exactly the common
 * prefix, and the references are right on traces small enough to work out by hand. */
#include "t_util.h"
#include "workload.h"

static char path[64];

static void cleanup(void)
{
	if (path[0])
		unlink(path);
}

TestSuite(workload, .fini = cleanup);

/* A trace file of @lines, returned loaded. */
static void trace_of(const char *lines, struct wl_trace *t)
{
	size_t bad = 0;
	int fd;

	strcpy(path, "/tmp/kvcd-wl-XXXXXX");
	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, lines, strlen(lines)), (ssize_t)strlen(lines));
	close(fd);
	cr_assert_eq(wl_load(path, t, &bad), 0, "line %zu", bad);
	unlink(path); /* loaded: the file is not needed any more */
	path[0] = '\0';
}

static char *generate(uint64_t seed, unsigned n, size_t *len)
{
	struct wl_params p;
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);

	wl_defaults(&p);
	p.seed = seed;
	p.requests = n;
	cr_assert_eq(wl_generate(&p, f), 0);
	fclose(f);
	return buf;
}

Test(workload, the_generator_is_reproducible_and_its_file_loads)
{
	size_t a_len, b_len, c_len;
	char *a = generate(7, 300, &a_len), *b = generate(7, 300, &b_len),
	     *c = generate(8, 300, &c_len);
	struct wl_trace t;
	unsigned kinds[3] = { 0 };

	cr_assert(a_len == b_len && !memcmp(a, b, a_len), "the same seed, the same trace");
	cr_assert(a_len != c_len || memcmp(a, c, a_len), "another seed, another trace");
	trace_of(a, &t);
	cr_assert_eq(t.n, 300);
	for (size_t i = 0; i < t.n; i++) {
		cr_assert(t.req[i].nchunks > 0 && t.req[i].out.chunks > 0);
		cr_assert(!i || t.req[i].t_ms >= t.req[i - 1].t_ms, "arrivals in order");
		kinds[t.req[i].kind]++;
	}
	cr_assert(kinds[WL_CHAT] && kinds[WL_DOC] && kinds[WL_ONEOFF], "every kind of request");
	wl_free(&t);
	free(a);
	free(b);
	free(c);
}

Test(workload, keys_are_shared_exactly_up_to_the_first_difference)
{
	struct wl_trace t;
	struct kvc_key k0[16], k1[16], k2[16];

	trace_of(
		"{\"t_ms\": 0, \"tenant\": 0, \"kind\": \"chat\", \"segs\": [[1, 3], [2, 2]], "
		"\"out\": [3, 1]}\n"
		"{\"t_ms\": 1, \"tenant\": 0, \"kind\": \"chat\", \"segs\": [[1, 3], [2, 2], [3, 1],"
		" [4, 2]], \"out\": [5, 1]}\n"
		"{\"t_ms\": 2, \"tenant\": 0, \"kind\": \"doc\", \"segs\": [[1, 3], [9, 2]], "
		"\"out\": [6, 1]}\n",
		&t);
	cr_assert_eq(wl_keys(&t.req[0], 1, k0, 16), 6, "prompt and generated chunks");
	cr_assert_eq(wl_keys(&t.req[1], 0, k1, 16), 8, "the prompt alone");
	cr_assert_eq(wl_keys(&t.req[2], 0, k2, 16), 5);
	cr_assert_eq(memcmp(k0, k1, 6 * sizeof(*k0)), 0, "the next turn extends the last");
	cr_assert_eq(memcmp(k0, k2, 3 * sizeof(*k0)), 0, "the system prompt is shared");
	cr_assert_neq(memcmp(&k0[3], &k2[3], sizeof(*k0)), 0, "then the chains part");
	wl_free(&t);
	cr_assert_neq(wl_load("/nonexistent/trace", &t, NULL), 0);
	size_t bad = 0;

	strcpy(path, "/tmp/kvcd-wl-XXXXXX");
	int fd = mkstemp(path);
	const char *junk = "{\"t_ms\": 0, \"tenant\": 0, \"kind\": \"chat\", \"segs\": [[1, 3]], "
			   "\"out\": [3, 1]}\n{\"t_ms\": 1, \"segs\": [[1,\n";

	cr_assert_eq(write(fd, junk, strlen(junk)), (ssize_t)strlen(junk));
	close(fd);
	cr_assert_eq(wl_load(path, &t, &bad), -EBADMSG);
	unlink(path);
	path[0] = '\0';
	cr_assert_eq(bad, 2, "the bad line is named");
}

/* Three chains A, B, C of 2 chunks each, no generated chunks, in the order A B C A B A; two
 * blocks fit. LRU keeps the last two blocks stored, so nothing is ever a hit. MIN keeps A:
 * it bypasses B and C (used later than A) and hits A twice (4 chunks). */
Test(workload, belady_and_lru_on_a_trace_worked_out_by_hand)
{
	static const char *names = "ABCABA";
	char lines[1024] = "", *p = lines;
	struct wl_trace t;
	struct wl_sim lru, opt, all;

	for (const char *c = names; *c; c++)
		p += sprintf(
			p,
			"{\"t_ms\": 0, \"tenant\": 0, \"kind\": \"oneoff\", \"segs\": [[%d, 2]], "
			"\"out\": [%d, 0]}\n",
			*c, 1000 + *c);
	trace_of(lines, &t);
	cr_assert_eq(wl_sim_lru(&t, 2, &lru), 0);
	cr_assert_eq(wl_sim_belady(&t, 2, &opt), 0);
	cr_assert_eq(lru.chunks, 12);
	cr_assert_eq(lru.hit_chunks, 0, "LRU: %llu", (unsigned long long)lru.hit_chunks);
	cr_assert_eq(opt.hit_chunks, 4, "MIN: %llu", (unsigned long long)opt.hit_chunks);
	cr_assert_eq(wl_sim_lru(&t, SIZE_MAX, &all), 0);
	cr_assert_eq(all.hit_chunks, 6, "unbounded: every repeat hits");
	cr_assert_eq(all.unique_blocks, 6);
	wl_free(&t);
}

/* On a generated trace MIN is never below LRU, and both rise with capacity up to the
 * unbounded hit rate. */
Test(workload, belady_bounds_lru_on_a_generated_trace)
{
	size_t len;
	char *buf = generate(3, 400, &len);
	struct wl_trace t;
	struct wl_sim lru, opt, all;
	double last = -1;

	trace_of(buf, &t);
	free(buf);
	cr_assert_eq(wl_sim_lru(&t, SIZE_MAX, &all), 0);
	for (size_t cap = 64; cap <= all.unique_blocks; cap *= 4) {
		cr_assert_eq(wl_sim_lru(&t, cap, &lru), 0);
		cr_assert_eq(wl_sim_belady(&t, cap, &opt), 0);
		cr_assert_geq(opt.hit_chunks, lru.hit_chunks, "capacity %zu", cap);
		cr_assert_leq(opt.hit_chunks, all.hit_chunks);
		cr_assert_geq((double)opt.hit_chunks, last);
		last = (double)opt.hit_chunks;
	}
	wl_free(&t);
}
