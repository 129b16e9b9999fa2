/* kvcctl - inspect and steer a running kvcd, through the public client API only.
 *
 *   kvcctl [--socket PATH] [--ns NAME] ping | stats [--json|--prometheus] | ls [--json]
 *          | clients [--json] | evict SIZE|--all | policy [STRING] | top [--interval S]
 *          | calibrate [--from-blocks N] [--energy PCT] [--weights K0,V0,...] [--rope BASE]
 *
 * Every argument is parsed strictly: an unknown command, flag or malformed number is an error
 * that names it, and changes nothing.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kvc.h>

#include "cli.h"

static int attach(const char *sock, const char *ns, int timeout_ms, kvc_client **c)
{
	struct kvc_attach_opts o;
	int err;

	kvc_attach_opts_init(&o);
	o.socket = sock;
	o.ns = ns;
	o.staging_size = 4096; /* admin requests use the scratch area */
	if (timeout_ms)
		o.op_timeout_ms = timeout_ms;
	err = kvc_attach(&o, c);
	if (err)
		cli_attach_error("kvcctl", sock, ns, err);
	return err;
}

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0.0;
}

static const char *dtype_name(unsigned d)
{
	return d == KVC_F32 ? "f32" : d == KVC_F16 ? "f16" : d == KVC_BF16 ? "bf16" : "?";
}

/* The width of the namespace column: its longest name, at least 9. */
static int ns_width(const struct kvc_stats *st)
{
	int w = 9;

	for (unsigned i = 0; i < st->nns && i < 32; i++)
		if ((int)strlen(st->ns[i].name) > w)
			w = (int)strlen(st->ns[i].name);
	return w;
}

/* GB/s of @bytes in @ns (0 when nothing was copied). */
static double gbps(uint64_t bytes, uint64_t ns)
{
	return ns ? (double)bytes / (double)ns : 0.0;
}

static void gpu_use_json(const __typeof__(((struct kvc_stats *)0)->gpu_use[0]) *u)
{
	printf(", \"clients\": %u, \"staging_bytes\": %" PRIu64 ", \"stores\": %" PRIu64
	       ", \"fetches\": %" PRIu64 ", \"encoded\": %" PRIu64 ", \"decoded\": %" PRIu64
	       ", \"bounced\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"d2h_bytes\": %" PRIu64
	       ", \"h2d_bytes\": %" PRIu64 ", \"d2h_gbps\": %.2f, \"h2d_gbps\": %.2f",
	       u->clients, u->staging_bytes, u->stores, u->fetches, u->encoded, u->decoded,
	       u->bounced, u->errors, u->d2h_bytes, u->h2d_bytes, gbps(u->d2h_bytes, u->d2h_ns),
	       gbps(u->h2d_bytes, u->h2d_ns));
}

static void gpu_pool_json(const __typeof__(((struct kvc_stats *)0)->gpu_pool[0]) *p)
{
	printf(", \"pool_bytes\": %" PRIu64 ", \"bytes_used\": %" PRIu64 ", \"blocks\": %" PRIu64
	       ", \"pool_hits\": %" PRIu64 ", \"pool_misses\": %" PRIu64
	       ", \"promotions\": %" PRIu64 ", \"demotions\": %" PRIu64 ", \"no_room\": %" PRIu64,
	       p->pool_bytes, p->bytes_used, p->blocks, p->hits, p->misses, p->promotions,
	       p->demotions, p->no_room);
}

static const char *gpu_status(int s)
{
	static const char *const names[] = { "off", "no driver", "driver error", "no device",
					     "ready" };

	return s >= 0 && s <= KVC_GPU_READY ? names[s] : "unknown";
}

/* @s (at most @n bytes, NUL-terminated or not) as a JSON string. */
static void json_string(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n && s[i]; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			printf("\\%c", c);
		else if (c < 0x20)
			printf("\\u%04x", c);
		else
			putchar(c);
	}
	putchar('"');
}

static void print_stats_json(const struct kvc_stats *st)
{
	printf("{\"blocks\": %" PRIu64 ", \"bytes_used\": %" PRIu64 ", \"bytes_free\": %" PRIu64
	       ", \"bytes_in\": %" PRIu64 ", \"bytes_stored\": %" PRIu64 ", \"hits\": %" PRIu64
	       ", \"misses\": %" PRIu64 ", \"hit_ratio\": %.6f, \"evictions\": %" PRIu64
	       ", \"pinned\": %" PRIu64 ", \"bad_requests\": %" PRIu64
	       ", \"checksum_failures\": %" PRIu64 ", \"metadata_bytes\": %" PRIu64
	       ", \"clients\": %u, \"uptime_ms\": %" PRIu64 ", \"boot_token\": \"%016" PRIx64
	       "\", \"nodes\": [",
	       st->blocks, st->bytes_used, st->bytes_free, st->bytes_in, st->bytes_stored, st->hits,
	       st->misses, ratio(st->hits, st->hits + st->misses), st->evictions, st->pinned,
	       st->bad_requests, st->checksum_failures, st->metadata_bytes, st->clients,
	       st->uptime_ms, st->boot_token);
	for (unsigned i = 0; i < st->nnodes && i < KVC_MAX_NODES; i++)
		printf("%s{\"node\": %d, \"hugepages\": %s, \"bytes_total\": %" PRIu64
		       ", \"bytes_used\": %" PRIu64 ", \"bytes_free\": %" PRIu64
		       ", \"blocks\": %" PRIu64 "}",
		       i ? ", " : "", st->node[i].node, st->node[i].hugepages ? "true" : "false",
		       st->node[i].bytes_total, st->node[i].bytes_used,
		       st->node[i].bytes_total - st->node[i].bytes_used, st->node[i].blocks);
	printf("], \"namespaces\": [");
	for (unsigned i = 0; i < st->nns && i < 32; i++) {
		/* a namespace is named by its client: quotes and backslashes are escaped */
		printf("%s{\"name\": ", i ? ", " : "");
		json_string(st->ns[i].name, sizeof(st->ns[i].name));
		printf(", \"policy\": ");
		json_string(st->ns[i].policy, sizeof(st->ns[i].policy));
		printf(", \"blocks\": %" PRIu64 ", \"bytes_in\": %" PRIu64
		       ", \"bytes_stored\": %" PRIu64 ", \"fallbacks\": %" PRIu64
		       ", \"hits\": %" PRIu64 ", \"misses\": %" PRIu64 ", \"evictions\": %" PRIu64
		       ", \"quota\": %" PRIu64 ", \"bases\": {\"count\": %u, \"newest\": %u"
		       ", \"bytes\": %" PRIu64 "}}",
		       st->ns[i].blocks, st->ns[i].bytes_in, st->ns[i].bytes_stored,
		       st->ns[i].fallbacks, st->ns_ext[i].hits, st->ns_ext[i].misses,
		       st->ns_ext[i].evictions, st->ns_ext[i].quota, st->ns_bases[i].count,
		       st->ns_bases[i].newest, st->ns_bases[i].bytes);
	}
	printf("], \"ops\": {");
	for (unsigned i = 0; kvc_op_name(i); i++) {
		const struct kvc_op_stats *o = kvc_stats_op(st, i);

		printf("%s\"%s\": {\"count\": %" PRIu64 ", \"errors\": %" PRIu64
		       ", \"p50_ns\": %" PRIu64 ", \"p99_ns\": %" PRIu64 ", \"p999_ns\": %" PRIu64
		       "}",
		       i ? ", " : "", kvc_op_name(i), o->count, o->errors, o->p50_ns, o->p99_ns,
		       o->p999_ns);
	}
	printf("}, \"recompress\": {\"blocks\": %" PRIu64 ", \"busy\": %" PRIu64
	       ", \"kept\": %" PRIu64 ", \"bytes_before\": %" PRIu64 ", \"bytes_after\": %" PRIu64,
	       st->recompress.blocks, st->recompress.busy, st->recompress.kept,
	       st->recompress.bytes_before, st->recompress.bytes_after);
	printf("}, \"gpu\": {\"status\": \"%s\", \"why\": ", gpu_status(st->gpu.status));
	json_string(st->gpu.why, sizeof(st->gpu.why));
	printf(", \"driver_version\": %d}, \"gpus\": [", st->gpu.driver_version);
	for (unsigned i = 0; i < st->gpu.ndev && i < 16; i++) {
		printf("%s{\"device\": %d, \"name\": ", i ? ", " : "", st->gpu.dev[i].ordinal);
		json_string(st->gpu.dev[i].name, sizeof(st->gpu.dev[i].name));
		printf(", \"pci\": ");
		json_string(st->gpu.dev[i].pci, sizeof(st->gpu.dev[i].pci));
		printf(", \"numa_node\": %d, \"mem_bytes\": %" PRIu64, st->gpu.dev[i].numa_node,
		       st->gpu.dev[i].mem_bytes);
		gpu_use_json(&st->gpu_use[i]);
		gpu_pool_json(&st->gpu_pool[i]);
		printf("}");
	}
	printf("], \"remote\": ");
	if (!st->remote.enabled)
		printf("null}\n");
	else
		printf("{\"nodes\": %u, \"slots_ok\": %" PRIu64 ", \"puts\": %" PRIu64
		       ", \"gets\": %" PRIu64 ", \"hits\": %" PRIu64 ", \"misses\": %" PRIu64
		       ", \"errors\": %" PRIu64 ", \"dropped\": %" PRIu64 ", \"rejected\": %" PRIu64
		       ", \"bytes_out\": %" PRIu64 ", \"bytes_in\": %" PRIu64
		       ", \"get_p50_ns\": %" PRIu64 ", \"get_p99_ns\": %" PRIu64 "}}\n",
		       st->remote.nodes, st->remote.slots_ok, st->remote.puts, st->remote.gets,
		       st->remote.hits, st->remote.misses, st->remote.errors, st->remote.dropped,
		       st->remote.rejected, st->remote.bytes_out, st->remote.bytes_in,
		       st->remote.get_p50_ns, st->remote.get_p99_ns);
}

static void print_stats(const struct kvc_stats *st)
{
	printf("blocks          %" PRIu64 "\n", st->blocks);
	printf("bytes used      %" PRIu64 " (%.1f MiB)\n", st->bytes_used,
	       st->bytes_used / 1048576.0);
	printf("bytes free      %" PRIu64 " (%.1f MiB)\n", st->bytes_free,
	       st->bytes_free / 1048576.0);
	printf("bytes in/stored %" PRIu64 " / %" PRIu64 "\n", st->bytes_in, st->bytes_stored);
	printf("hits / misses   %" PRIu64 " / %" PRIu64 " (hit ratio %.4f)\n", st->hits, st->misses,
	       ratio(st->hits, st->hits + st->misses));
	printf("evictions       %" PRIu64 "\n", st->evictions);
	printf("pinned          %" PRIu64 "\n", st->pinned);
	printf("bad requests    %" PRIu64 "\n", st->bad_requests);
	printf("checksum fails  %" PRIu64 "\n", st->checksum_failures);
	printf("metadata bytes  %" PRIu64 "\n", st->metadata_bytes);
	printf("clients         %u\n", st->clients);
	printf("uptime          %.1f s\n", st->uptime_ms / 1000.0);
	printf("gpu             %s: %.*s\n", gpu_status(st->gpu.status), (int)sizeof(st->gpu.why),
	       st->gpu.why);
	for (unsigned i = 0; i < st->gpu.ndev && i < 16; i++) {
		const __typeof__(st->gpu_use[0]) *u = &st->gpu_use[i];

		printf("  gpu %d         %.*s, %.*s, %.1f GiB, nearest node %d\n",
		       st->gpu.dev[i].ordinal, (int)sizeof(st->gpu.dev[i].name),
		       st->gpu.dev[i].name, (int)sizeof(st->gpu.dev[i].pci), st->gpu.dev[i].pci,
		       st->gpu.dev[i].mem_bytes / 1073741824.0, st->gpu.dev[i].numa_node);
		printf("                %u client(s), %.1f MiB GPU staging; %" PRIu64
		       " stores, %" PRIu64 " fetches (%" PRIu64 " encoded, %" PRIu64
		       " decoded on the GPU, %" PRIu64 " on the CPU); %.2f GB/s off, %.2f GB/s "
		       "on; %" PRIu64 " errors\n",
		       u->clients, u->staging_bytes / 1048576.0, u->stores, u->fetches, u->encoded,
		       u->decoded, u->bounced, gbps(u->d2h_bytes, u->d2h_ns),
		       gbps(u->h2d_bytes, u->h2d_ns), u->errors);
		if (st->gpu_pool[i].pool_bytes)
			printf("                GPU pool %.1f MiB, %.1f MiB used by %" PRIu64
			       " copies; %" PRIu64 " hits, %" PRIu64 " misses; %" PRIu64
			       " promotions, %" PRIu64 " demotions\n",
			       st->gpu_pool[i].pool_bytes / 1048576.0,
			       st->gpu_pool[i].bytes_used / 1048576.0, st->gpu_pool[i].blocks,
			       st->gpu_pool[i].hits, st->gpu_pool[i].misses,
			       st->gpu_pool[i].promotions, st->gpu_pool[i].demotions);
	}
	if (st->remote.enabled)
		printf("remote tier     %u nodes, %" PRIu64 " of 16384 slots up; %" PRIu64
		       " puts, %" PRIu64 " gets (%" PRIu64 " hits), %" PRIu64 " errors, %" PRIu64
		       " dropped, %" PRIu64 " rejected\n",
		       st->remote.nodes, st->remote.slots_ok, st->remote.puts, st->remote.gets,
		       st->remote.hits, st->remote.errors, st->remote.dropped, st->remote.rejected);
	printf("\n%-6s %5s %12s %12s %12s\n", "node", "huge", "total MiB", "used MiB", "blocks");
	for (unsigned i = 0; i < st->nnodes && i < KVC_MAX_NODES; i++)
		printf("%-6d %5s %12.1f %12.1f %12" PRIu64 "\n", st->node[i].node,
		       st->node[i].hugepages ? "yes" : "no", st->node[i].bytes_total / 1048576.0,
		       st->node[i].bytes_used / 1048576.0, st->node[i].blocks);
	int w = ns_width(st);

	printf("\n%-*s %10s %14s %14s %6s %9s %9s %9s  %s\n", w, "namespace", "blocks", "bytes in",
	       "bytes stored", "ratio", "hit ratio", "evicted", "fallbacks", "policy");
	for (unsigned i = 0; i < st->nns && i < 32; i++)
		printf("%-*s %10" PRIu64 " %14" PRIu64 " %14" PRIu64 " %6.2f %9.4f %9" PRIu64
		       " %9" PRIu64 "  %s\n",
		       w, st->ns[i].name, st->ns[i].blocks, st->ns[i].bytes_in,
		       st->ns[i].bytes_stored, ratio(st->ns[i].bytes_in, st->ns[i].bytes_stored),
		       ratio(st->ns_ext[i].hits, st->ns_ext[i].hits + st->ns_ext[i].misses),
		       st->ns_ext[i].evictions, st->ns[i].fallbacks, st->ns[i].policy);
	for (unsigned i = 0; i < st->nns && i < 32; i++)
		if (st->ns_bases[i].count)
			printf("%-*s learned bases: %u, newest %u (%.1f KiB)\n", w, st->ns[i].name,
			       st->ns_bases[i].count, st->ns_bases[i].newest,
			       st->ns_bases[i].bytes / 1024.0);
	printf("\n%-10s %10s %8s %10s %10s %10s\n", "op", "count", "errors", "p50 us", "p99 us",
	       "p99.9 us");
	for (unsigned i = 0; kvc_op_name(i); i++) {
		const struct kvc_op_stats *o = kvc_stats_op(st, i);

		if (o->count)
			printf("%-10s %10" PRIu64 " %8" PRIu64 " %10.2f %10.2f %10.2f\n",
			       kvc_op_name(i), o->count, o->errors, o->p50_ns / 1e3,
			       o->p99_ns / 1e3, o->p999_ns / 1e3);
	}
	if (st->recompress.blocks + st->recompress.busy + st->recompress.kept)
		printf("\nrecompressed %" PRIu64 " blocks, %.1f -> %.1f MiB; left raw: %" PRIu64
		       " busy, %" PRIu64 " not smaller or not encodable\n",
		       st->recompress.blocks, st->recompress.bytes_before / 1048576.0,
		       st->recompress.bytes_after / 1048576.0, st->recompress.busy,
		       st->recompress.kept);
}

static const char *shape(const struct kvc_layout *l, char *buf, size_t len)
{
	snprintf(buf, len, "%ux%ux%ux%u", l->layers, l->kv_heads, l->head_dim, l->tokens);
	return buf;
}

static int cmd_ls(kvc_client *c, int json)
{
	char sh[64];
	struct kvc_block_info b[256];
	size_t start = 0;
	int n;

	if (json)
		printf("[");
	else
		printf("%-32s  %-17s %-5s %5s %12s %5s %5s %8s\n", "key",
		       "layers x heads x dim x tokens", "dtype", "codec", "bytes", "node", "pins",
		       "hits");
	while ((n = kvc_list(c, start, b, 256, sizeof(b[0]))) > 0) {
		for (int i = 0; i < n; i++) {
			const struct kvc_block_info *x = &b[i];

			if (json)
				printf("%s{\"key\": \"%016" PRIx64 "%016" PRIx64
				       "\", \"dtype\": \"%s\", \"codec\": %u, "
				       "\"layers\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"tokens\": %u, "
				       "\"bytes\": %" PRIu64
				       ", \"node\": %d, \"pins\": %u, \"hits\": %" PRIu64 "}",
				       start + (size_t)i ? ", " : "", x->key.hi, x->key.lo,
				       dtype_name(x->layout.dtype), x->layout.codec,
				       x->layout.layers, x->layout.kv_heads, x->layout.head_dim,
				       x->layout.tokens, x->bytes, x->node, x->pins, x->hits);
			else
				printf("%016" PRIx64 "%016" PRIx64 "  %-29s %-5s %5u %12" PRIu64
				       " %5d %5u %8" PRIu64 "\n",
				       x->key.hi, x->key.lo, shape(&x->layout, sh, sizeof(sh)),
				       dtype_name(x->layout.dtype), x->layout.codec, x->bytes,
				       x->node, x->pins, x->hits);
		}
		start += (size_t)n;
	}
	if (json)
		printf("]\n");
	return n < 0 ? n : 0;
}

/* Show the namespace's policy, or set it. */
static int cmd_policy(kvc_client *c, const char *ns, const char *policy)
{
	struct kvc_stats st;
	char why[160];
	int err;

	if (!ns)
		ns = "default";
	if (policy) {
		err = kvc_policy(c, policy, KVC_POLICY_NAMESPACE, why, sizeof(why));
		if (err == -EINVAL && why[0]) {
			fprintf(stderr, "kvcctl policy: %s\n", why);
			return err;
		}
		if (err < 0)
			return err;
	}
	err = kvc_stats(c, &st, sizeof(st));
	if (err)
		return err;
	for (unsigned i = 0; i < st.nns && i < 32; i++)
		if (!strcmp(st.ns[i].name, ns))
			printf("%s\n", st.ns[i].policy);
	return 0;
}

static int cmd_clients(kvc_client *c, int json)
{
	struct kvc_client_info ci[256];
	int n = kvc_clients(c, ci, 256, sizeof(ci[0]));

	if (n < 0)
		return n;
	if (json)
		printf("[");
	else
		printf("%-6s %-8s %-6s %-6s %-4s %-6s %12s %8s  %s\n", "id", "pid", "uid", "gid",
		       "node", "worker", "requests", "bad", "namespace");
	for (int i = 0; i < n; i++) {
		if (json) {
			printf("%s{\"id\": %u, \"pid\": %d, \"uid\": %u, \"gid\": %u, \"node\": %d, "
			       "\"worker\": %u, \"requests\": %" PRIu64
			       ", \"bad_requests\": %" PRIu64 ", \"namespace\": ",
			       i ? ", " : "", ci[i].client_id, ci[i].pid, ci[i].uid, ci[i].gid,
			       ci[i].node, ci[i].worker, ci[i].requests, ci[i].bad_requests);
			json_string(ci[i].ns, sizeof(ci[i].ns));
			printf("}");
		} else
			printf("%-6u %-8d %-6u %-6u %-4d %-6u %12" PRIu64 " %8" PRIu64 "  %s\n",
			       ci[i].client_id, ci[i].pid, ci[i].uid, ci[i].gid, ci[i].node,
			       ci[i].worker, ci[i].requests, ci[i].bad_requests, ci[i].ns);
	}
	if (json)
		printf("]\n");
	return 0;
}

/* top: a live view, refreshed every @interval seconds (@count times; 0: until interrupted). */
static int cmd_top(kvc_client *c, double interval, unsigned long long count)
{
	static struct kvc_stats a, b;
	struct kvc_stats *prev = &a, *cur = &b, *t;
	int err = kvc_stats(c, prev, sizeof(*prev)), tty = isatty(1);

	for (unsigned long long n = 0; !err && (!count || n < count); n++) {
		struct timespec ts = { (time_t)interval,
				       (long)((interval - (time_t)interval) * 1e9) };
		uint64_t ops = 0, ops0 = 0;
		double dt;
		int w;

		nanosleep(&ts, NULL);
		err = kvc_stats(c, cur, sizeof(*cur));
		if (err)
			break;
		dt = (double)(cur->uptime_ms - prev->uptime_ms) / 1e3;
		dt = dt > 0 ? dt : interval;
		for (unsigned i = 0; kvc_op_name(i); i++) {
			ops += kvc_stats_op(cur, i)->count;
			ops0 += kvc_stats_op(prev, i)->count;
		}
		if (tty)
			printf("\033[H\033[2J");
		printf("kvcd up %.0f s, %u clients, %" PRIu64 " blocks, %.1f of %.1f MiB used\n"
		       "%.0f ops/s, hit ratio %.4f, %.1f evictions/s\n\n",
		       cur->uptime_ms / 1e3, cur->clients, cur->blocks, cur->bytes_used / 1048576.0,
		       (cur->bytes_used + cur->bytes_free) / 1048576.0, (double)(ops - ops0) / dt,
		       ratio(cur->hits - prev->hits,
			     cur->hits - prev->hits + cur->misses - prev->misses),
		       (double)(cur->evictions - prev->evictions) / dt);
		w = ns_width(cur);
		printf("%-*s %10s %12s %10s %10s %9s %11s\n", w, "namespace", "blocks",
		       "stored MiB", "hits/s", "misses/s", "hit ratio", "evictions/s");
		for (unsigned i = 0; i < cur->nns && i < 32; i++) {
			uint64_t h = cur->ns_ext[i].hits, m = cur->ns_ext[i].misses,
				 e = cur->ns_ext[i].evictions;

			for (unsigned j = 0; j < prev->nns && j < 32; j++)
				if (!strcmp(prev->ns[j].name, cur->ns[i].name)) {
					h -= prev->ns_ext[j].hits;
					m -= prev->ns_ext[j].misses;
					e -= prev->ns_ext[j].evictions;
				}
			printf("%-*s %10" PRIu64 " %12.1f %10.1f %10.1f %9.4f %11.1f\n", w,
			       cur->ns[i].name, cur->ns[i].blocks,
			       cur->ns[i].bytes_stored / 1048576.0, (double)h / dt, (double)m / dt,
			       ratio(h, h + m), (double)e / dt);
		}
		fflush(stdout);
		t = prev;
		prev = cur;
		cur = t;
	}
	return err;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvcctl [--socket PATH] [--ns NAME] COMMAND [ARGS]\n"
		"  ping                 exit 0 once kvcd answers\n"
		"  stats [--json | --prometheus]\n"
		"                       pools, blocks, hit ratios, evictions, per-op latency;\n"
		"                       --prometheus: the text kvcd serves on /metrics\n"
		"  ls [--json]          blocks of the namespace\n"
		"  clients [--json]     attached clients (your uid's, unless you are an admin)\n"
		"  evict SIZE | --all   evict unpinned blocks until SIZE (e.g. 512M, 2G) is free,\n"
		"                       or every unpinned block\n"
		"  policy [STRING]      show the namespace's compression policy, or set it\n"
		"                       (e.g. int8, int4:rotate=hadamard, fp8,\n"
		"                       kivi:kbits=4,vbits=4,group=32,sink=4); stored blocks keep\n"
		"                       the encoding they were written with; every key:\n"
		"                       docs/policies.md\n"
		"  calibrate [--from-blocks N] [--energy PERCENT] [--weights K0,V0,K1,V1,...]\n"
		"            [--rope BASE]\n"
		"                       learn the namespace's basis for learned= policies from\n"
		"                       N of its raw blocks (default: as many as kvcd reads) and\n"
		"                       keep PERCENT (default 99) of their energy; --weights:\n"
		"                       what an error in each layer's K and V costs the model\n"
		"                       (kbits/vbits policies spend their bits by it); --rope:\n"
		"                       the model's RoPE base, keys learned as before RoPE\n"
		"  top [--interval SECONDS] [--count N]\n"
		"                       live view: ops/s, hit ratio, bytes and evictions per\n"
		"                       namespace\n"
		"  --version            the version of kvcctl and of the kvcd it reaches\n");
}

/* The command's own arguments: the flags in @flags (each "--x"), at most @maxpos others. */
static int args_ok(const char *cmd, int argc, char **argv, const char *const *flags, int maxpos)
{
	int pos = 0;

	for (int i = 0; i < argc; i++) {
		bool known = false;

		for (const char *const *f = flags; *f && !known; f++)
			known = !strcmp(argv[i], *f);
		if (known)
			continue;
		if (argv[i][0] == '-' && argv[i][1] && !(argv[i][1] >= '0' && argv[i][1] <= '9')) {
			fprintf(stderr, "kvcctl %s: unknown option '%s'\n", cmd, argv[i]);
			return 0;
		}
		if (++pos > maxpos) {
			fprintf(stderr, "kvcctl %s: unexpected argument '%s'\n", cmd, argv[i]);
			return 0;
		}
	}
	return 1;
}

static bool has(int argc, char **argv, const char *flag)
{
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], flag))
			return true;
	return false;
}

/* The argument after @flag, or NULL. */
static const char *value(int argc, char **argv, const char *flag)
{
	for (int i = 0; i + 1 < argc; i++)
		if (!strcmp(argv[i], flag))
			return argv[i + 1];
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = { { "socket", required_argument, 0, 's' },
					      { "ns", required_argument, 0, 'n' },
					      { "help", no_argument, 0, 'h' },
					      { "version", no_argument, 0, 'V' },
					      { 0, 0, 0, 0 } };
	static const char *const none[] = { NULL }, *const json_flag[] = { "--json", NULL },
				 *const stats_flags[] = { "--json", "--prometheus", NULL },
				 *const evict_flags[] = { "--all", NULL };
	const char *sock = NULL, *ns = NULL, *cmd;
	int o, err, version = 0, n;
	char **rest;
	kvc_client *c;

	while ((o = getopt_long(argc, argv, "+s:n:hV", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'n': ns = optarg; break;
		case 'h': usage(stdout); return 0;
		case 'V': version = 1; break;
		default: usage(stderr); return 2;
		}
	}
	if (version) { /* ours, and the daemon's when one answers */
		static struct kvc_stats st;

		printf("kvcctl %s\n", KVC_VERSION_STRING);
		if (optind < argc)
			return 2;
		if (attach(sock, ns, 0, &c))
			return 1;
		err = kvc_stats(c, &st, sizeof(st));
		if (!err)
			printf("kvcd %u.%u.%u (protocol %u.%u)\n", st.version >> 16,
			       st.version >> 8 & 0xff, st.version & 0xff, st.protocol >> 16,
			       st.protocol & 0xffff);
		kvc_detach(c);
		return err ? 1 : 0;
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind++];
	rest = argv + optind;
	n = argc - optind;
	/* check the whole command line before touching kvcd */
	if (!strcmp(cmd, "ping") || !strcmp(cmd, "top")) {
		static const char *const top_flags[] = { "--interval", "--count", NULL };

		if (!args_ok(cmd, n, rest, !strcmp(cmd, "top") ? top_flags : none,
			     !strcmp(cmd, "top") ? 2 : 0))
			return 2;
	} else if (!strcmp(cmd, "stats")) {
		if (!args_ok(cmd, n, rest, stats_flags, 0))
			return 2;
	} else if (!strcmp(cmd, "ls") || !strcmp(cmd, "clients")) {
		if (!args_ok(cmd, n, rest, json_flag, 0))
			return 2;
	} else if (!strcmp(cmd, "evict")) {
		if (!args_ok(cmd, n, rest, evict_flags, 1))
			return 2;
		if (n != 1) {
			fprintf(stderr,
				"kvcctl evict: give either a SIZE to free (e.g. 512M) or --all "
				"to evict every unpinned block\n");
			return 2;
		}
	} else if (!strcmp(cmd, "policy")) {
		if (!args_ok(cmd, n, rest, none, 1))
			return 2;
	} else if (!strcmp(cmd, "calibrate")) {
		static const char *const cal_flags[] = { "--from-blocks", "--energy", "--weights",
							 "--rope", NULL };

		if (!args_ok(cmd, n, rest, cal_flags, 4))
			return 2;
	} else {
		fprintf(stderr, "kvcctl: unknown command '%s' (kvcctl --help lists them)\n", cmd);
		return 2;
	}
	uint64_t bytes = 0;
	unsigned long long count = 0;
	double interval = 1.0;

	if (!strcmp(cmd, "evict") && !has(n, rest, "--all")) {
		if (cli_size("kvcctl evict", "SIZE", rest[0], &bytes))
			return 2;
		if (!bytes) {
			fprintf(stderr,
				"kvcctl evict: SIZE must be above 0 (--all evicts everything)\n");
			return 2;
		}
	}
	if (!strcmp(cmd, "top")) {
		const char *iv = value(n, rest, "--interval"), *cn = value(n, rest, "--count");
		char *end;

		if (iv) {
			interval = strtod(iv, &end);
			if (*end || end == iv || !(interval >= 0.05 && interval <= 3600)) {
				fprintf(stderr,
					"kvcctl top: --interval '%s': expected seconds from "
					"0.05 to 3600\n",
					iv);
				return 2;
			}
		}
		if (cn && cli_uint("kvcctl top", "--count", cn, 1, 1ull << 40, &count))
			return 2;
		if ((iv && !has(n, rest, "--interval")) || (n % 2))
			return 2;
	}
	unsigned long long blocks = 0, energy = 99, rope = 0;
	static float weight[2 * 65535];
	uint32_t nweight = 0;

	if (!strcmp(cmd, "calibrate")) {
		const char *bv = value(n, rest, "--from-blocks"), *ev = value(n, rest, "--energy");
		const char *wv = value(n, rest, "--weights"), *rv = value(n, rest, "--rope");
		int flags = has(n, rest, "--from-blocks") + has(n, rest, "--energy") +
			    has(n, rest, "--weights") + has(n, rest, "--rope");

		if ((bv && cli_uint("kvcctl calibrate", "--from-blocks", bv, 1, 65535, &blocks)) ||
		    (ev && cli_uint("kvcctl calibrate", "--energy", ev, 1, 100, &energy)) ||
		    (rv && cli_uint("kvcctl calibrate", "--rope", rv, 1, 100000000, &rope)))
			return 2;
		if (n != 2 * flags) {
			fprintf(stderr, "kvcctl calibrate: --from-blocks, --energy, --weights and "
					"--rope each take a value\n");
			return 2;
		}
		for (const char *p = wv; p && *p && nweight < 2 * 65535;) {
			char *end;
			float x = strtof(p, &end);

			if (end == p || (*end && *end != ',') || !isfinite(x) || !(x > 0))
				break;
			weight[nweight++] = x;
			p = *end ? end + 1 : end;
			if (!*p) {
				wv = NULL; /* every value read */
				break;
			}
		}
		if (wv || nweight % 2) {
			fprintf(stderr,
				"kvcctl calibrate: --weights takes a positive number for each "
				"layer's K and V, comma-separated (K0,V0,K1,V1,...)\n");
			return 2;
		}
	}
	/* a large model's calibration takes seconds on kvcd's worker: wait for it */
	if (attach(sock, ns, !strcmp(cmd, "calibrate") ? 600000 : 0, &c))
		return 1;
	if (!strcmp(cmd, "calibrate")) {
		uint64_t bytes_b = 0;

		err = nweight || rope
			      ? kvc_calibrate_model(c, (uint32_t)blocks, (uint32_t)energy,
						    (uint32_t)rope, nweight ? weight : NULL,
						    nweight / 2, &bytes_b)
			      : kvc_calibrate(c, (uint32_t)blocks, (uint32_t)energy, &bytes_b);
		if (err > 0)
			printf("basis %d of namespace %s: %" PRIu64 " bytes\n", err,
			       ns ? ns : "default", bytes_b);
		if (err == -ENOENT) { /* not a miss: nothing to learn from */
			fprintf(stderr, "kvcctl calibrate: no raw block in the namespace to learn "
					"from (store some under policy none first)\n");
			kvc_detach(c);
			return 1;
		}
	} else if (!strcmp(cmd, "ping")) {
		err = kvc_nop(c);
		if (!err)
			printf("ok\n");
	} else if (!strcmp(cmd, "stats")) {
		static struct kvc_stats st;

		err = kvc_stats(c, &st, sizeof(st));
		if (!err && has(n, rest, "--prometheus")) {
			size_t len = kvc_stats_prometheus(&st, NULL, 0);
			char *text = malloc(len + 1);

			if (text) {
				kvc_stats_prometheus(&st, text, len + 1);
				fputs(text, stdout);
				free(text);
			} else {
				err = -ENOMEM;
			}
		} else if (!err) {
			has(n, rest, "--json") ? print_stats_json(&st) : print_stats(&st);
		}
	} else if (!strcmp(cmd, "ls")) {
		err = cmd_ls(c, has(n, rest, "--json"));
	} else if (!strcmp(cmd, "clients")) {
		err = cmd_clients(c, has(n, rest, "--json"));
	} else if (!strcmp(cmd, "evict")) {
		/* the protocol counts MiB: a size is rounded up to whole MiB */
		uint64_t mib = bytes ? (bytes + (1u << 20) - 1) >> 20 : 0;

		err = mib > UINT32_MAX ? -ERANGE : kvc_evict(c, (uint32_t)mib);
		if (err >= 0)
			printf("evicted %d blocks\n", err);
	} else if (!strcmp(cmd, "policy")) {
		err = cmd_policy(c, ns, n ? rest[0] : NULL);
	} else {
		err = cmd_top(c, interval, count);
	}
	if (err < 0)
		fprintf(stderr, "kvcctl %s: %s\n", cmd, kvc_strerror(err));
	kvc_detach(c);
	return err < 0 ? 1 : 0;
}
