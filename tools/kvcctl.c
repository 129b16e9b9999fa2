/* kvcctl - inspect and steer a running kvcd, through the public client API only.
 *
 *   kvcctl [--socket PATH] [--ns NAME] ping | stats [--json] | ls [--json] | clients [--json]
 *                                      | evict [MiB] | policy [STRING]
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <kvc.h>

static int attach(const char *sock, const char *ns, kvc_client **c)
{
	struct kvc_attach_opts o;
	int err;

	kvc_attach_opts_init(&o);
	o.socket = sock;
	o.ns = ns;
	o.staging_size = 4096; /* admin requests use the scratch area */
	err = kvc_attach(&o, c);
	if (err)
		fprintf(stderr, "kvcctl: cannot attach to %s: %s\n",
			sock ? sock : kvc_default_socket(), kvc_strerror(err));
	return err;
}

static void print_stats_json(const struct kvc_stats *st)
{
	printf("{\"blocks\": %" PRIu64 ", \"bytes_used\": %" PRIu64 ", \"bytes_free\": %" PRIu64
	       ", \"bytes_in\": %" PRIu64 ", \"bytes_stored\": %" PRIu64 ", \"hits\": %" PRIu64
	       ", \"misses\": %" PRIu64 ", \"evictions\": %" PRIu64 ", \"pinned\": %" PRIu64
	       ", \"bad_requests\": %" PRIu64 ", \"checksum_failures\": %" PRIu64
	       ", \"metadata_bytes\": %" PRIu64 ", \"clients\": %u, \"uptime_ms\": %" PRIu64
	       ", \"boot_token\": \"%016" PRIx64 "\", \"nodes\": [",
	       st->blocks, st->bytes_used, st->bytes_free, st->bytes_in, st->bytes_stored, st->hits,
	       st->misses, st->evictions, st->pinned, st->bad_requests, st->checksum_failures,
	       st->metadata_bytes, st->clients, st->uptime_ms, st->boot_token);
	for (unsigned i = 0; i < st->nnodes && i < KVC_MAX_NODES; i++)
		printf("%s{\"node\": %d, \"hugepages\": %s, \"bytes_total\": %" PRIu64
		       ", \"bytes_used\": %" PRIu64 ", \"bytes_free\": %" PRIu64
		       ", \"blocks\": %" PRIu64 "}",
		       i ? ", " : "", st->node[i].node, st->node[i].hugepages ? "true" : "false",
		       st->node[i].bytes_total, st->node[i].bytes_used,
		       st->node[i].bytes_total - st->node[i].bytes_used, st->node[i].blocks);
	printf("], \"namespaces\": [");
	for (unsigned i = 0; i < st->nns && i < 32; i++)
		printf("%s{\"name\": \"%s\", \"policy\": \"%s\", \"blocks\": %" PRIu64
		       ", \"bytes_in\": %" PRIu64 ", \"bytes_stored\": %" PRIu64
		       ", \"fallbacks\": %" PRIu64 "}",
		       i ? ", " : "", st->ns[i].name, st->ns[i].policy, st->ns[i].blocks,
		       st->ns[i].bytes_in, st->ns[i].bytes_stored, st->ns[i].fallbacks);
	printf("], \"ops\": {");
	for (unsigned i = 0; kvc_op_name(i); i++)
		printf("%s\"%s\": {\"count\": %" PRIu64 ", \"errors\": %" PRIu64
		       ", \"p50_ns\": %" PRIu64 ", \"p99_ns\": %" PRIu64 ", \"p999_ns\": %" PRIu64
		       "}",
		       i ? ", " : "", kvc_op_name(i), st->op[i].count, st->op[i].errors,
		       st->op[i].p50_ns, st->op[i].p99_ns, st->op[i].p999_ns);
	printf("}}\n");
}

static void print_stats(const struct kvc_stats *st)
{
	printf("blocks          %" PRIu64 "\n", st->blocks);
	printf("bytes used      %" PRIu64 " (%.1f MiB)\n", st->bytes_used,
	       st->bytes_used / 1048576.0);
	printf("bytes free      %" PRIu64 " (%.1f MiB)\n", st->bytes_free,
	       st->bytes_free / 1048576.0);
	printf("bytes in/stored %" PRIu64 " / %" PRIu64 "\n", st->bytes_in, st->bytes_stored);
	printf("hits / misses   %" PRIu64 " / %" PRIu64 "\n", st->hits, st->misses);
	printf("evictions       %" PRIu64 "\n", st->evictions);
	printf("pinned          %" PRIu64 "\n", st->pinned);
	printf("bad requests    %" PRIu64 "\n", st->bad_requests);
	printf("checksum fails  %" PRIu64 "\n", st->checksum_failures);
	printf("metadata bytes  %" PRIu64 "\n", st->metadata_bytes);
	printf("clients         %u\n", st->clients);
	printf("uptime          %.1f s\n", st->uptime_ms / 1000.0);
	printf("\n%-6s %5s %12s %12s %12s\n", "node", "huge", "total MiB", "used MiB", "blocks");
	for (unsigned i = 0; i < st->nnodes && i < KVC_MAX_NODES; i++)
		printf("%-6d %5s %12.1f %12.1f %12" PRIu64 "\n", st->node[i].node,
		       st->node[i].hugepages ? "yes" : "no", st->node[i].bytes_total / 1048576.0,
		       st->node[i].bytes_used / 1048576.0, st->node[i].blocks);
	printf("\n%-16s %10s %14s %14s %6s %9s  %s\n", "namespace", "blocks", "bytes in",
	       "bytes stored", "ratio", "fallbacks", "policy");
	for (unsigned i = 0; i < st->nns && i < 32; i++)
		printf("%-16s %10" PRIu64 " %14" PRIu64 " %14" PRIu64 " %6.2f %9" PRIu64 "  %s\n",
		       st->ns[i].name, st->ns[i].blocks, st->ns[i].bytes_in, st->ns[i].bytes_stored,
		       st->ns[i].bytes_stored ? (double)st->ns[i].bytes_in / st->ns[i].bytes_stored
					      : 0.0,
		       st->ns[i].fallbacks, st->ns[i].policy);
	printf("\n%-8s %12s %8s %10s %10s %10s\n", "op", "count", "errors", "p50 us", "p99 us",
	       "p99.9 us");
	for (unsigned i = 0; kvc_op_name(i); i++)
		if (st->op[i].count)
			printf("%-8s %12" PRIu64 " %8" PRIu64 " %10.2f %10.2f %10.2f\n",
			       kvc_op_name(i), st->op[i].count, st->op[i].errors,
			       st->op[i].p50_ns / 1e3, st->op[i].p99_ns / 1e3,
			       st->op[i].p999_ns / 1e3);
}

static int cmd_ls(kvc_client *c, int json)
{
	struct kvc_block_info b[256];
	size_t start = 0;
	int n;

	if (json)
		printf("[");
	while ((n = kvc_list(c, start, b, 256, sizeof(b[0]))) > 0) {
		for (int i = 0; i < n; i++) {
			const struct kvc_block_info *x = &b[i];

			if (json)
				printf("%s{\"key\": \"%016" PRIx64 "%016" PRIx64
				       "\", \"dtype\": %u, "
				       "\"layers\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"tokens\": %u, "
				       "\"bytes\": %" PRIu64
				       ", \"node\": %d, \"pins\": %u, \"hits\": %" PRIu64 "}",
				       start + (size_t)i ? ", " : "", x->key.hi, x->key.lo,
				       x->layout.dtype, x->layout.layers, x->layout.kv_heads,
				       x->layout.head_dim, x->layout.tokens, x->bytes, x->node,
				       x->pins, x->hits);
			else
				printf("%016" PRIx64 "%016" PRIx64 "  %ux%ux%ux%u dt%u  %10" PRIu64
				       " B  node %d  pins %u  hits %" PRIu64 "\n",
				       x->key.hi, x->key.lo, x->layout.layers, x->layout.kv_heads,
				       x->layout.head_dim, x->layout.tokens, x->layout.dtype,
				       x->bytes, x->node, x->pins, x->hits);
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
		if (json)
			printf("%s{\"id\": %u, \"pid\": %d, \"uid\": %u, \"gid\": %u, \"node\": %d, "
			       "\"worker\": %u, \"requests\": %" PRIu64
			       ", \"bad_requests\": %" PRIu64 ", \"namespace\": \"%s\"}",
			       i ? ", " : "", ci[i].client_id, ci[i].pid, ci[i].uid, ci[i].gid,
			       ci[i].node, ci[i].worker, ci[i].requests, ci[i].bad_requests,
			       ci[i].ns);
		else
			printf("%-6u %-8d %-6u %-6u %-4d %-6u %12" PRIu64 " %8" PRIu64 "  %s\n",
			       ci[i].client_id, ci[i].pid, ci[i].uid, ci[i].gid, ci[i].node,
			       ci[i].worker, ci[i].requests, ci[i].bad_requests, ci[i].ns);
	}
	if (json)
		printf("]\n");
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: kvcctl [--socket PATH] [--ns NAME] COMMAND\n"
		"  ping               exit 0 once kvcd answers\n"
		"  stats [--json]     pools, blocks, hits, evictions, per-op latency\n"
		"  ls [--json]        blocks of the namespace\n"
		"  clients [--json]   attached clients\n"
		"  evict [MiB]        evict unpinned blocks until MiB are free (default: all)\n"
		"  policy [STRING]    show the namespace's compression policy, or set it\n"
		"                     (e.g. int8, int4:rotate=hadamard, fp8,\n"
		"                     kivi:kbits=4,vbits=4,group=32,sink=4); stored blocks keep\n"
		"                     the encoding they were written with; every key:\n"
		"                     docs/policies.md\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = { { "socket", required_argument, 0, 's' },
					      { "ns", required_argument, 0, 'n' },
					      { "json", no_argument, 0, 'j' },
					      { "help", no_argument, 0, 'h' },
					      { 0, 0, 0, 0 } };
	const char *sock = NULL, *ns = NULL, *cmd;
	int o, json = 0, err;
	kvc_client *c;

	while ((o = getopt_long(argc, argv, "+s:n:jh", opts, NULL)) != -1) {
		switch (o) {
		case 's': sock = optarg; break;
		case 'n': ns = optarg; break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	cmd = argv[optind++];
	for (int i = optind; i < argc; i++)
		if (!strcmp(argv[i], "--json"))
			json = 1;
	if (attach(sock, ns, &c))
		return 1;
	if (!strcmp(cmd, "ping")) {
		err = kvc_nop(c);
		if (!err)
			printf("ok\n");
	} else if (!strcmp(cmd, "stats")) {
		struct kvc_stats st;

		err = kvc_stats(c, &st, sizeof(st));
		if (!err)
			json ? print_stats_json(&st) : print_stats(&st);
	} else if (!strcmp(cmd, "ls")) {
		err = cmd_ls(c, json);
	} else if (!strcmp(cmd, "clients")) {
		err = cmd_clients(c, json);
	} else if (!strcmp(cmd, "evict")) {
		unsigned long mib = optind < argc && argv[optind][0] != '-'
					    ? strtoul(argv[optind], NULL, 10)
					    : 0;

		err = kvc_evict(c, (uint32_t)mib);
		if (err >= 0)
			printf("evicted %d blocks\n", err);
	} else if (!strcmp(cmd, "policy")) {
		err = cmd_policy(c, ns, optind < argc ? argv[optind] : NULL);
	} else {
		usage(stderr);
		kvc_detach(c);
		return 2;
	}
	if (err < 0)
		fprintf(stderr, "kvcctl %s: %s\n", cmd, kvc_strerror(err));
	kvc_detach(c);
	return err < 0 ? 1 : 0;
}
