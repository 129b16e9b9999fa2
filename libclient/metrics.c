/* metrics.c - a STATS answer in the Prometheus text exposition format (version 0.0.4).
 *
 * One renderer for both ends: kvcd serves it on /metrics (daemon/metrics.c) and `kvcctl stats
 * --prometheus` prints it for node_exporter's textfile collector, so the two never differ.
 * Names follow Prometheus conventions: the kvcd_ prefix, base units (_bytes, _seconds),
 * _total for counters, labels for the node, the namespace and the operation.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kvc.h"

/* Here rather than in client.c: kvcd links this file, and names its operations the same. */
const char *kvc_op_name(unsigned i)
{
	static const char *const names[] = {
		"nop",	"store",   "fetch", "lookup", "delete", "pin",	      "unpin",	  "stats",
		"list", "clients", "evict", "policy", "select", "recompress", "calibrate"
	};

	return i < sizeof(names) / sizeof(names[0]) ? names[i] : NULL;
}

struct out {
	char *buf;
	size_t len, used; /* used may pass len: the size needed */
};

static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(o->used < o->len ? o->buf + o->used : NULL,
		      o->used < o->len ? o->len - o->used : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->used += (size_t)n;
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One unlabelled value per family, from a table ending in a NULL name. */
struct scalar {
	const char *name, *type, *help;
	uint64_t v;
};

static void scalars(struct out *o, const struct scalar *t)
{
	for (; t->name; t++) {
		head(o, t->name, t->type, t->help);
		put(o, "%s %llu\n", t->name, (unsigned long long)t->v);
	}
}

/* A label value: backslash, double quote and newline escaped. */
static const char *label(const char *s, char *buf, size_t len)
{
	size_t j = 0;

	for (; *s && j + 3 < len; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n')
			buf[j++] = '\\';
		buf[j++] = *s == '\n' ? 'n' : *s;
	}
	buf[j] = '\0';
	return buf;
}

/* One family over the nodes, the namespaces or the operations. */
#define PER_NODE(N, T, H, E)                                                   \
	do {                                                                   \
		head(o, N, T, H);                                              \
		for (unsigned i = 0; i < st->nnodes && i < KVC_MAX_NODES; i++) \
			put(o, "%s{node=\"%d\"} %llu\n", N, st->node[i].node,  \
			    (unsigned long long)(E));                          \
	} while (0)

#define PER_GPU(N, T, H, E)                                                           \
	do {                                                                          \
		head(o, N, T, H);                                                     \
		for (unsigned i = 0; i < st->gpu.ndev && i < 16; i++)                 \
			put(o, "%s{device=\"%d\"} %llu\n", N, st->gpu.dev[i].ordinal, \
			    (unsigned long long)(E));                                 \
	} while (0)

#define PER_NS(N, T, H, F, E)                                          \
	do {                                                           \
		head(o, N, T, H);                                      \
		for (unsigned i = 0; i < st->nns && i < 32; i++)       \
			put(o, "%s{namespace=\"%s\"} " F "\n", N,      \
			    label(st->ns[i].name, lb, sizeof(lb)), E); \
	} while (0)

#define PER_OP(N, T, H, E)                                                \
	do {                                                              \
		head(o, N, T, H);                                         \
		for (unsigned i = 0; kvc_op_name(i); i++)                 \
			put(o, "%s{op=\"%s\"} %llu\n", N, kvc_op_name(i), \
			    (unsigned long long)(E));                     \
	} while (0)

size_t kvc_stats_prometheus(const struct kvc_stats *st, char *buf, size_t len)
{
	struct out out = { buf, len, 0 }, *o = &out;
	uint64_t lookups = st->hits + st->misses;
	char lb[2 * 64 + 4];

	head(o, "kvcd_info", "gauge", "kvcd's release and protocol, as labels.");
	put(o, "kvcd_info{version=\"%u.%u.%u\",protocol=\"%u.%u\"} 1\n", st->version >> 16,
	    st->version >> 8 & 0xff, st->version & 0xff, st->protocol >> 16, st->protocol & 0xffff);
	head(o, "kvcd_uptime_seconds", "gauge", "Time since kvcd started.");
	put(o, "kvcd_uptime_seconds %.3f\n", st->uptime_ms / 1e3);
	head(o, "kvcd_hit_ratio", "gauge", "Hits over FETCHes since kvcd started.");
	put(o, "kvcd_hit_ratio %.6f\n", lookups ? (double)st->hits / (double)lookups : 0.0);
	scalars(o, (const struct scalar[]){
			   { "kvcd_clients", "gauge", "Attached clients.", st->clients },
			   { "kvcd_blocks", "gauge", "Blocks in the cache.", st->blocks },
			   { "kvcd_hits_total", "counter", "FETCHes that found their block.",
			     st->hits },
			   { "kvcd_misses_total", "counter", "FETCHes that did not.", st->misses },
			   { "kvcd_evictions_total", "counter", "Blocks evicted to make room.",
			     st->evictions },
			   { "kvcd_pinned_blocks", "gauge", "Pins held by clients.", st->pinned },
			   { "kvcd_bad_requests_total", "counter", "Requests refused as malformed.",
			     st->bad_requests },
			   { "kvcd_checksum_failures_total", "counter",
			     "Blocks dropped because their bytes no longer matched their checksum.",
			     st->checksum_failures },
			   { "kvcd_input_bytes", "gauge",
			     "Bytes the engines sent for the blocks held.", st->bytes_in },
			   { "kvcd_stored_bytes", "gauge",
			     "Bytes the held blocks take after compression.", st->bytes_stored },
			   { "kvcd_metadata_bytes", "gauge",
			     "kvcd's own memory for the index and records.", st->metadata_bytes },
			   { NULL, NULL, NULL, 0 } });

	if (st->remote.enabled)
		scalars(o,
			(const struct scalar[]){
				{ "kvcd_remote_nodes", "gauge",
				  "Cluster nodes the remote tier knows.", st->remote.nodes },
				{ "kvcd_remote_slots_ok", "gauge",
				  "Slots (of 16384) with a connected owner.", st->remote.slots_ok },
				{ "kvcd_remote_puts_total", "counter",
				  "Blocks written to the cluster.", st->remote.puts },
				{ "kvcd_remote_gets_total", "counter",
				  "Blocks asked of the cluster.", st->remote.gets },
				{ "kvcd_remote_hits_total", "counter", "Blocks the cluster had.",
				  st->remote.hits },
				{ "kvcd_remote_misses_total", "counter", "Blocks it did not have.",
				  st->remote.misses },
				{ "kvcd_remote_errors_total", "counter",
				  "Remote requests that failed.", st->remote.errors },
				{ "kvcd_remote_dropped_total", "counter",
				  "Writes dropped because the queue was full.",
				  st->remote.dropped },
				{ "kvcd_remote_rejected_total", "counter",
				  "Values under kvcd's keys that did not check out.",
				  st->remote.rejected },
				{ "kvcd_remote_sent_bytes_total", "counter",
				  "Bytes written to the cluster.", st->remote.bytes_out },
				{ "kvcd_remote_received_bytes_total", "counter",
				  "Bytes read back from the cluster.", st->remote.bytes_in },
				{ NULL, NULL, NULL, 0 } });
	scalars(o, (const struct scalar[]){ { "kvcd_gpu_devices", "gauge",
					      "CUDA devices kvcd found (0: none, or no driver).",
					      st->gpu.ndev },
					    { NULL, NULL, NULL, 0 } });
	PER_GPU("kvcd_gpu_clients", "gauge", "Clients with GPU staging on the device.",
		st->gpu_use[i].clients);
	PER_GPU("kvcd_gpu_staging_bytes", "gauge", "GPU staging handed out on the device.",
		st->gpu_use[i].staging_bytes);
	PER_GPU("kvcd_gpu_stores_total", "counter", "STOREs from GPU staging.",
		st->gpu_use[i].stores);
	PER_GPU("kvcd_gpu_fetches_total", "counter", "FETCHes into GPU staging.",
		st->gpu_use[i].fetches);
	PER_GPU("kvcd_gpu_encoded_total", "counter", "Blocks encoded on the device.",
		st->gpu_use[i].encoded);
	PER_GPU("kvcd_gpu_decoded_total", "counter", "Blocks decoded on the device.",
		st->gpu_use[i].decoded);
	PER_GPU("kvcd_gpu_errors_total", "counter", "GPU copies or kernels that failed.",
		st->gpu_use[i].errors);
	PER_GPU("kvcd_gpu_d2h_bytes_total", "counter", "Bytes copied off the device.",
		st->gpu_use[i].d2h_bytes);
	PER_GPU("kvcd_gpu_h2d_bytes_total", "counter", "Bytes copied onto the device.",
		st->gpu_use[i].h2d_bytes);
	PER_GPU("kvcd_gpu_pool_size_bytes", "gauge", "GPU pool on the device (0: none).",
		st->gpu_pool[i].pool_bytes);
	PER_GPU("kvcd_gpu_pool_used_bytes", "gauge", "GPU pool bytes holding copies of blocks.",
		st->gpu_pool[i].bytes_used);
	PER_GPU("kvcd_gpu_pool_blocks", "gauge", "Copies of blocks in the GPU pool.",
		st->gpu_pool[i].blocks);
	PER_GPU("kvcd_gpu_pool_hits_total", "counter", "GPU FETCHes served from the GPU pool.",
		st->gpu_pool[i].hits);
	PER_GPU("kvcd_gpu_pool_misses_total", "counter", "GPU FETCHes the GPU pool missed.",
		st->gpu_pool[i].misses);
	PER_GPU("kvcd_gpu_promotions_total", "counter", "Copies of blocks made in the GPU pool.",
		st->gpu_pool[i].promotions);
	PER_GPU("kvcd_gpu_demotions_total", "counter",
		"Copies dropped from the GPU pool for room, least recently used first.",
		st->gpu_pool[i].demotions);
	PER_NODE("kvcd_pool_size_bytes", "gauge", "Pool size per NUMA node.",
		 st->node[i].bytes_total);
	PER_NODE("kvcd_pool_used_bytes", "gauge", "Pool bytes in use per NUMA node.",
		 st->node[i].bytes_used);
	PER_NODE("kvcd_pool_blocks", "gauge", "Blocks per NUMA node.", st->node[i].blocks);
	PER_NODE("kvcd_pool_hugepages", "gauge", "1 when the pool is backed by huge pages.",
		 st->node[i].hugepages);

	PER_NS("kvcd_namespace_blocks", "gauge", "Blocks per namespace.", "%llu",
	       (unsigned long long)st->ns[i].blocks);
	PER_NS("kvcd_namespace_input_bytes", "gauge", "Bytes the engines sent, per namespace.",
	       "%llu", (unsigned long long)st->ns[i].bytes_in);
	PER_NS("kvcd_namespace_stored_bytes", "gauge", "Bytes held after compression.", "%llu",
	       (unsigned long long)st->ns[i].bytes_stored);
	PER_NS("kvcd_namespace_compression_ratio", "gauge", "Input bytes over stored bytes.",
	       "%.4f",
	       st->ns[i].bytes_stored ? (double)st->ns[i].bytes_in / (double)st->ns[i].bytes_stored
				      : 1.0);
	PER_NS("kvcd_namespace_hits_total", "counter", "FETCH hits per namespace.", "%llu",
	       (unsigned long long)st->ns_ext[i].hits);
	PER_NS("kvcd_namespace_misses_total", "counter", "FETCH misses per namespace.", "%llu",
	       (unsigned long long)st->ns_ext[i].misses);
	PER_NS("kvcd_namespace_evictions_total", "counter", "Evictions per namespace.", "%llu",
	       (unsigned long long)st->ns_ext[i].evictions);
	PER_NS("kvcd_namespace_fallbacks_total", "counter",
	       "STOREs kept raw because the policy did not fit.", "%llu",
	       (unsigned long long)st->ns[i].fallbacks);
	PER_NS("kvcd_namespace_quota_bytes", "gauge", "Pool bytes it may hold (0: no quota).",
	       "%llu", (unsigned long long)st->ns_ext[i].quota);
	PER_NS("kvcd_namespace_learned_bases", "gauge",
	       "Learned bases kept for the namespace (CALIBRATE).", "%u", st->ns_bases[i].count);
	PER_NS("kvcd_namespace_learned_basis_version", "gauge",
	       "The basis learned= STOREs use (0: none).", "%u", st->ns_bases[i].newest);
	PER_NS("kvcd_namespace_learned_basis_bytes", "gauge", "Pool bytes the bases hold.", "%llu",
	       (unsigned long long)st->ns_bases[i].bytes);

	PER_OP("kvcd_requests_total", "counter", "Requests executed, per operation.",
	       kvc_stats_op(st, i)->count);
	PER_OP("kvcd_request_errors_total", "counter",
	       "Requests that failed (not counting misses), per operation.",
	       kvc_stats_op(st, i)->errors);
	scalars(o, (const struct scalar[]){
			   { "kvcd_recompress_blocks_total", "counter",
			     "Raw blocks RECOMPRESS rewrote in a policy's form.",
			     st->recompress.blocks },
			   { "kvcd_recompress_busy_total", "counter",
			     "Blocks RECOMPRESS left raw: read, pinned or removed meanwhile.",
			     st->recompress.busy },
			   { "kvcd_recompress_kept_total", "counter",
			     "Blocks RECOMPRESS left raw: not encodable, or no smaller.",
			     st->recompress.kept },
			   { "kvcd_recompress_bytes_before_total", "counter",
			     "Pool bytes of the blocks RECOMPRESS rewrote, before.",
			     st->recompress.bytes_before },
			   { "kvcd_recompress_bytes_after_total", "counter",
			     "Pool bytes of the blocks RECOMPRESS rewrote, after.",
			     st->recompress.bytes_after },
			   { NULL, NULL, NULL, 0 } });
	/* service times: buckets from 128 ns to 2^34 ns (17 s), powers of two */
	head(o, "kvcd_request_duration_seconds", "histogram",
	     "Service time inside kvcd, per operation.");
	for (unsigned i = 0; i < 13; i++) { /* the ops of op_hist */
		uint64_t cum = 0, sum_ns = 0;

		for (unsigned k = 0; k < 64; k++) {
			cum += st->op_hist[i][k];
			/* a bucket's midpoint stands for its requests in the sum */
			sum_ns += st->op_hist[i][k] * (k ? 3ull << (k - 1) >> 1 : 0);
			if (k >= 7 && k <= 34)
				put(o,
				    "kvcd_request_duration_seconds_bucket{op=\"%s\",le=\"%.9g\"} %llu\n",
				    kvc_op_name(i), (double)(1ull << k) / 1e9,
				    (unsigned long long)cum);
		}
		put(o, "kvcd_request_duration_seconds_bucket{op=\"%s\",le=\"+Inf\"} %llu\n",
		    kvc_op_name(i), (unsigned long long)cum);
		put(o, "kvcd_request_duration_seconds_sum{op=\"%s\"} %.9f\n", kvc_op_name(i),
		    sum_ns / 1e9);
		put(o, "kvcd_request_duration_seconds_count{op=\"%s\"} %llu\n", kvc_op_name(i),
		    (unsigned long long)cum);
	}
	return out.used;
}
