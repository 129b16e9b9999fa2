/* stats.c - per-op counters and service-time histograms (each worker records its own, so
 * recording takes no lock and shares no cache line), and the answers to STATS and CLIENTS:
 * a consistent-enough snapshot of the store, the sessions and those records. The answers run
 * on a worker thread and take the store lock and the sessions lock, one after the other,
 * never both.
 */
#include <errno.h>
#include <string.h>

#include "kvcd.h"
#include "kvc_version.h"

/* ---- recording ---------------------------------------------------------------------------- */

unsigned kvcd_hist_bucket(uint64_t ns)
{
	unsigned e, b;

	if (ns < 8)
		return (unsigned)ns;
	e = 63u - (unsigned)__builtin_clzll(ns);
	b = 8 + (e - 3) * 8 + (unsigned)((ns >> (e - 3)) & 7);
	return b < KVCD_HIST ? b : KVCD_HIST - 1;
}

uint64_t kvcd_hist_value(unsigned b)
{
	unsigned e, m;

	if (b < 8)
		return b;
	e = (b - 8) / 8 + 3;
	m = (b - 8) % 8;
	return ((8ull + m) << (e - 3)) + ((1ull << (e - 3)) >> 1); /* bucket midpoint */
}

void kvcd_op_record(struct kvcd_op_stats *st, uint8_t opcode, int32_t res, uint64_t ns)
{
	unsigned op = opcode < KVCP_OP__COUNT ? opcode : KVCP_OP_NOP;

	__atomic_fetch_add(&st->count[op], 1, __ATOMIC_RELAXED);
	if (res < 0 && res != -ENOENT)
		__atomic_fetch_add(&st->errors[op], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&st->hist[op].b[kvcd_hist_bucket(ns)], 1, __ATOMIC_RELAXED);
}

/* ---- answers -------------------------------------------------------------------------------- */

unsigned kvcd_clients(struct kvcd *d, const struct kvcd_session *asker, struct kvcp_client_ent *out,
		      unsigned max)
{
	unsigned n = 0;

	pthread_mutex_lock(&d->sessions_lock);
	for (unsigned i = 0; i < d->nsessions && n < max; i++) {
		struct kvcd_session *s = d->sessions[i];
		struct kvcp_client_ent e = { 0 };

		if (!asker->admin && s->uid != asker->uid)
			continue; /* another user's pid, uid and namespace are not this one's */
		e.client_id = s->id;
		e.pid = s->pid;
		e.uid = s->uid;
		e.gid = s->gid;
		e.node = d->pools[s->order[0]].node;
		e.worker = s->worker;
		e.requests = __atomic_load_n(&s->requests, __ATOMIC_RELAXED);
		e.bad_requests = __atomic_load_n(&s->bad_requests, __ATOMIC_RELAXED);
		memcpy(e.ns, s->ns, sizeof(e.ns));
		memcpy(&out[n++], &e, sizeof(e));
	}
	pthread_mutex_unlock(&d->sessions_lock);
	return n;
}

static uint64_t percentile(const struct kvcd_hist *h, uint64_t total, double q)
{
	uint64_t want = (uint64_t)(q * (double)total), seen = 0;

	if (!total)
		return 0;
	for (unsigned b = 0; b < KVCD_HIST; b++) {
		seen += h->b[b];
		if (seen > want)
			return kvcd_hist_value(b);
	}
	return kvcd_hist_value(KVCD_HIST - 1);
}

struct ns_filter {
	struct kvcd *d;
	uid_t uid;
};

/* Is a session of the asker's uid attached to namespace @name? sessions_lock held. */
static bool ns_visible(const char *name, void *arg)
{
	const struct ns_filter *f = arg;

	for (unsigned i = 0; i < f->d->nsessions; i++)
		if (f->d->sessions[i]->uid == f->uid && !strcmp(f->d->sessions[i]->ns, name))
			return true;
	return false;
}

void kvcd_stats(struct kvcd *d, const struct kvcd_session *asker, struct kvcp_stats *st)
{
	struct ns_filter f = { d, asker ? asker->uid : 0 };
	unsigned nworkers = __atomic_load_n(&d->nworkers, __ATOMIC_ACQUIRE);
	uint16_t ids[KVCP_MAX_NS_STATS];

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&d->sessions_lock); /* before the store lock, as everywhere */
	kvcd_store_stats(&d->store, st, ids, asker && !asker->admin ? ns_visible : NULL, &f);
	pthread_mutex_unlock(&d->sessions_lock);
	kvcd_bases_stats(d, ids, st);
	st->boot_token = d->boot_token;
	st->version = KVC_VERSION_MAJOR << 16 | KVC_VERSION_MINOR << 8 | KVC_VERSION_PATCH;
	st->protocol = KVCP_MAJOR << 16 | KVCP_MINOR;
	kvcd_remote_stats(d, &st->remote);
	st->gpu = d->gpu;
	kvcd_gpu_use(d, st->gpu_use);
	kvcd_gpu_pools(d, st->gpu_pool);
	st->uptime_ms = (kvcd_now_ns() - d->start_ns) / 1000000;
	pthread_mutex_lock(&d->sessions_lock);
	st->clients = d->nsessions;
	st->bad_requests = d->bad_closed;
	for (unsigned i = 0; i < d->nsessions; i++)
		st->bad_requests += __atomic_load_n(&d->sessions[i]->bad_requests,
						    __ATOMIC_RELAXED);
	pthread_mutex_unlock(&d->sessions_lock);
	for (unsigned op = 0; op < KVCP_OP__COUNT; op++) {
		struct kvcp_op_stats *o = op < KVCP_OP_STATS_N ? &st->op[op]
							       : &st->op_more[op - KVCP_OP_STATS_N];
		struct kvcd_hist h = { { 0 } };

		for (unsigned w = 0; w < nworkers; w++) {
			struct kvcd_worker *wk = &d->workers[w];

			o->count += __atomic_load_n(&wk->ops.count[op], __ATOMIC_RELAXED);
			o->errors += __atomic_load_n(&wk->ops.errors[op], __ATOMIC_RELAXED);
			for (unsigned b = 0; b < KVCD_HIST; b++)
				h.b[b] += __atomic_load_n(&wk->ops.hist[op].b[b], __ATOMIC_RELAXED);
		}
		uint64_t total = 0;

		for (unsigned b = 0; b < KVCD_HIST; b++)
			total += h.b[b];
		for (unsigned b = 0; op < KVCP_OP_STATS_N && b < KVCD_HIST; b++) {
			/* log-linear to powers of two */
			uint64_t lo = b < 8 ? b : kvcd_hist_value(b);
			unsigned k = lo ? 64u - (unsigned)__builtin_clzll(lo) : 0;

			st->op_hist[op][k < KVCP_HIST_BUCKETS ? k : KVCP_HIST_BUCKETS - 1] +=
				h.b[b];
		}
		o->p50_ns = percentile(&h, total, 0.50);
		o->p99_ns = percentile(&h, total, 0.99);
		o->p999_ns = percentile(&h, total, 0.999);
	}
	st->recompress.blocks = __atomic_load_n(&d->recompress.blocks, __ATOMIC_RELAXED);
	st->recompress.busy = __atomic_load_n(&d->recompress.busy, __ATOMIC_RELAXED);
	st->recompress.kept = __atomic_load_n(&d->recompress.kept, __ATOMIC_RELAXED);
	st->recompress.bytes_before = __atomic_load_n(&d->recompress.bytes_before,
						      __ATOMIC_RELAXED);
	st->recompress.bytes_after = __atomic_load_n(&d->recompress.bytes_after, __ATOMIC_RELAXED);
}
