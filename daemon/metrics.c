/* metrics.c - Prometheus metrics over HTTP ([metrics] listen = HOST:PORT; off by default).
 *
 * libmicrohttpd serves GET /metrics from its own thread: a STATS snapshot (the same one the
 * STATS request answers, taken under the sessions and store locks, never on a ring worker)
 * rendered by kvc_stats_prometheus (libclient/metrics.c, which `kvcctl stats --prometheus`
 * prints too). Anything else is 404 or 405; at most 16 connections, 5 s each.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcd.h"
#include "kvc.h"

static_assert(sizeof(struct kvc_stats) == sizeof(struct kvcp_stats), "one STATS layout");

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *body, size_t n,
			     enum MHD_ResponseMemoryMode mode, const char *type)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(n, body, mode);
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **req)
{
	static char not_found[] = "kvcd serves /metrics only\n", bad_method[] = "GET only\n";
	struct kvcd *d = cls;
	struct kvcp_stats *st;
	size_t n;
	char *body;

	(void)version;
	(void)upload;
	(void)upload_size;
	(void)req;
	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, bad_method, strlen(bad_method),
			     MHD_RESPMEM_PERSISTENT, "text/plain");
	if (strcmp(url, "/metrics"))
		return reply(c, MHD_HTTP_NOT_FOUND, not_found, strlen(not_found),
			     MHD_RESPMEM_PERSISTENT, "text/plain");
	st = malloc(sizeof(*st));
	if (!st)
		return MHD_NO;
	kvcd_stats(d, NULL, st);
	n = kvc_stats_prometheus((const struct kvc_stats *)st, NULL, 0);
	body = malloc(n + 1);
	if (body)
		kvc_stats_prometheus((const struct kvc_stats *)st, body, n + 1);
	free(st);
	if (!body)
		return MHD_NO;
	return reply(c, MHD_HTTP_OK, body, n, MHD_RESPMEM_MUST_FREE,
		     "text/plain; version=0.0.4; charset=utf-8");
}

int kvcd_metrics_start(struct kvcd *d)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	char host[64];
	unsigned port;
	const char *colon = strrchr(d->cfg.metrics_listen, ':');

	if (!d->cfg.metrics_listen[0])
		return 0;
	if (!colon || colon == d->cfg.metrics_listen ||
	    (size_t)(colon - d->cfg.metrics_listen) >= sizeof(host) ||
	    sscanf(colon + 1, "%u", &port) != 1 || port > 65535) {
		kvcd_log(LOG_ERR, "[metrics] listen = %s: expected HOST:PORT",
			 d->cfg.metrics_listen);
		return -EINVAL;
	}
	memcpy(host, d->cfg.metrics_listen, (size_t)(colon - d->cfg.metrics_listen));
	host[colon - d->cfg.metrics_listen] = '\0';
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		kvcd_log(LOG_ERR, "[metrics] listen = %s: HOST must be an IPv4 address",
			 d->cfg.metrics_listen);
		return -EINVAL;
	}
	sa.sin_port = htons((uint16_t)port);
	d->metrics = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
				      (uint16_t)port, NULL, NULL, handle, d, MHD_OPTION_SOCK_ADDR,
				      &sa, MHD_OPTION_CONNECTION_LIMIT, 16u,
				      MHD_OPTION_CONNECTION_TIMEOUT, 5u, MHD_OPTION_END);
	if (!d->metrics) {
		kvcd_log(LOG_ERR, "cannot serve metrics on %s: %s", d->cfg.metrics_listen,
			 strerror(errno ? errno : EADDRINUSE));
		return -EADDRINUSE;
	}
	kvcd_log(LOG_INFO, "metrics on http://%s/metrics", d->cfg.metrics_listen);
	return 0;
}

void kvcd_metrics_stop(struct kvcd *d)
{
	if (d->metrics)
		MHD_stop_daemon(d->metrics);
	d->metrics = NULL;
}
