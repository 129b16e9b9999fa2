/* config.c - embedded defaults and the INI configuration (libinih).
 *
 * [kvcd] holds the daemon's settings; each [namespace NAME] section holds the uids and gids
 * allowed to attach to that namespace. See docs/kvcd.conf.example for every key.
 */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "kvcd.h"

void kvcd_config_defaults(struct kvcd_config *c)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	memset(c, 0, sizeof(*c));
	c->socket_mode = 0660;
	c->pool_size = 256ull << 20;
	c->workers = ncpu >= 8 ? (unsigned)(ncpu / 4) : 1;
	if (c->workers > 8)
		c->workers = 8;
	c->staging_default = 32ull << 20;
	c->staging_max = 1ull << 30;
	c->sq_entries = 256;
	c->cq_entries = 256;
	c->scratch_size = 1u << 20;
	c->hugepages = KVCD_HUGE_TRY;
	c->checksum = true;
	c->high_wm = 95;
	c->low_wm = 90;
	c->lease_max_ms = 60000;
	c->busy_poll_us = 100;
	c->gpu_all = true; /* every CUDA device there is; none without a driver */
	c->gpu_staging_default = 64ull << 20;
	c->gpu_staging_max = 4ull << 30;
	c->max_clients = 256;
	c->max_pending = 64;
	c->max_pending_per_uid = 8;
	c->handshake_ms = 500;
	c->max_pins = 65536;
	c->max_lookup_keys = 1u << 18;
	c->log_level = LOG_INFO;
	c->remote_connect_ms = 200;
	c->remote_op_ms = 500;
	c->remote_ttl = 86400;
	c->remote_queue = 256ull << 20;
}

int kvcd_parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	switch (toupper((unsigned char)*end)) {
	case 'K':
		shift = 10;
		end++;
		break;
	case 'M':
		shift = 20;
		end++;
		break;
	case 'G':
		shift = 30;
		end++;
		break;
	case 'T':
		shift = 40;
		end++;
		break;
	}
	if (shift && (!strcasecmp(end, "iB") || !strcasecmp(end, "B")))
		end += strlen(end);
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_bool(const char *v, bool *out)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
	    !strcasecmp(v, "on"))
		*out = true;
	else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
		 !strcasecmp(v, "off"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_uint(const char *v, unsigned long max, unsigned *out)
{
	char *end;
	unsigned long x;

	errno = 0;
	x = strtoul(v, &end, 0);
	if (errno || end == v || *end || *v == '-' || x > max)
		return -EINVAL;
	*out = (unsigned)x;
	return 0;
}

/* A string value into @dst of @size bytes. Returns 0 or -ENAMETOOLONG. */
static int set_str(char *dst, size_t size, const char *v)
{
	if (strlen(v) >= size)
		return -ENAMETOOLONG;
	strcpy(dst, v);
	return 0;
}

static int parse_positive(const char *v, unsigned long max, unsigned *out)
{
	return parse_uint(v, max, out) || !*out ? -EINVAL : 0;
}

/* "0, alice, 1000" -> ids, resolving names with getpwnam/getgrnam. */
static int parse_ids(const char *v, bool groups, uint32_t *ids, unsigned *n)
{
	char buf[1024], *save = NULL, *tok;

	if (strlen(v) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, v);
	for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		unsigned id;

		if (*n >= KVCD_MAX_IDS)
			return -E2BIG;
		if (parse_uint(tok, UINT32_MAX - 1, &id)) {
			struct passwd *pw = groups ? NULL : getpwnam(tok);
			struct group *gr = groups ? getgrnam(tok) : NULL;

			if (!pw && !gr)
				return -ENOENT;
			id = pw ? pw->pw_uid : gr->gr_gid;
		}
		ids[(*n)++] = id;
	}
	return 0;
}

static int parse_policy(const char *v, struct kvcd_policy *p)
{
	char why[128];

	if (kvcd_policy_parse(v, p, why, sizeof(why))) {
		kvcd_log(LOG_ERR, "policy '%s': %s", v, why);
		return -EINVAL;
	}
	return 0;
}

static int set_daemon_key(struct kvcd_config *c, const char *k, const char *v)
{
	unsigned u;

	if (!strcmp(k, "socket")) {
		return set_str(c->socket, sizeof(c->socket), v);
	} else if (!strcmp(k, "socket_group")) {
		return set_str(c->socket_group, sizeof(c->socket_group), v);
	} else if (!strcmp(k, "socket_mode")) {
		return parse_uint(v, 0777, &c->socket_mode);
	} else if (!strcmp(k, "pool_size")) {
		return kvcd_parse_size(v, &c->pool_size);
	} else if (!strcmp(k, "workers")) {
		return parse_uint(v, 64, &c->workers) || !c->workers ? -EINVAL : 0;
	} else if (!strcmp(k, "staging_size")) {
		return kvcd_parse_size(v, &c->staging_default);
	} else if (!strcmp(k, "staging_max")) {
		return kvcd_parse_size(v, &c->staging_max);
	} else if (!strcmp(k, "ring_entries")) {
		if (parse_uint(v, 1u << 15, &u) || !kvcp_is_pow2(u) || u < 8)
			return -EINVAL;
		c->sq_entries = c->cq_entries = u;
	} else if (!strcmp(k, "hugepages")) {
		if (!strcmp(v, "never"))
			c->hugepages = KVCD_HUGE_NEVER;
		else if (!strcmp(v, "try"))
			c->hugepages = KVCD_HUGE_TRY;
		else if (!strcmp(v, "require"))
			c->hugepages = KVCD_HUGE_REQUIRE;
		else
			return -EINVAL;
	} else if (!strcmp(k, "memlock")) {
		if (!strcmp(v, "try"))
			c->memlock_try = true;
		else if (!strcmp(v, "require"))
			c->memlock_try = false;
		else
			return -EINVAL;
	} else if (!strcmp(k, "checksum")) {
		return parse_bool(v, &c->checksum);
	} else if (!strcmp(k, "high_watermark")) {
		return parse_uint(v, 100, &c->high_wm);
	} else if (!strcmp(k, "low_watermark")) {
		return parse_uint(v, 100, &c->low_wm);
	} else if (!strcmp(k, "lease_max_ms")) {
		return parse_uint(v, UINT32_MAX, &c->lease_max_ms) || !c->lease_max_ms ? -EINVAL
										       : 0;
	} else if (!strcmp(k, "busy_poll_us")) {
		return parse_uint(v, 1000000, &c->busy_poll_us);
	} else if (!strcmp(k, "max_clients")) {
		return parse_positive(v, 1u << 16, &c->max_clients);
	} else if (!strcmp(k, "max_pending")) {
		return parse_positive(v, 4096, &c->max_pending);
	} else if (!strcmp(k, "max_pending_per_uid")) {
		return parse_positive(v, 4096, &c->max_pending_per_uid);
	} else if (!strcmp(k, "handshake_timeout_ms")) {
		return parse_positive(v, 60000, &c->handshake_ms);
	} else if (!strcmp(k, "max_pins")) {
		return parse_positive(v, 1u << 24, &c->max_pins);
	} else if (!strcmp(k, "max_lookup_keys")) {
		return parse_positive(v, 1u << 26, &c->max_lookup_keys);
	} else if (!strcmp(k, "admin_uids")) {
		c->nadmin = 0;
		return parse_ids(v, false, c->admin_uids, &c->nadmin);
	} else if (!strcmp(k, "log_level")) {
		c->log_level = kvcd_log_parse_level(v);
		return c->log_level < 0 ? -EINVAL : 0;
	} else if (!strcmp(k, "state_dir")) { /* room for "/kvcd-pool-N" */
		return set_str(c->state_dir, sizeof(c->state_dir) - 16, v);
	} else if (!strcmp(k, "strict_namespaces")) {
		return parse_bool(v, &c->strict_ns);
	} else if (!strcmp(k, "policy")) {
		return parse_policy(v, &c->policy);
	} else {
		return -ENOENT;
	}
	return 0;
}

static struct kvcd_ns_acl *ns_section(struct kvcd_config *c, const char *name)
{
	for (unsigned i = 0; i < c->nns; i++)
		if (!strcmp(c->ns[i].name, name))
			return &c->ns[i];
	if (c->nns == KVCD_MAX_NS || !*name || strlen(name) >= KVCP_NS_MAX)
		return NULL;
	strcpy(c->ns[c->nns].name, name);
	c->ns[c->nns].remote = -1;
	return &c->ns[c->nns++];
}

/* What a key takes, for the message when a value is refused. */
static const char *expected(const char *k)
{
	static const struct {
		const char *key, *what;
	} forms[] = {
		{ "socket_mode", "an octal mode such as 0660" },
		{ "pool_size", "a size such as 256M or 4G" },
		{ "staging_size", "a size such as 32M" },
		{ "staging_max", "a size such as 1G" },
		{ "quota", "a size of at least 1M, such as 2G" },
		{ "workers", "1 to 64" },
		{ "ring_entries", "a power of two from 8 to 32768" },
		{ "hugepages", "never, try or require" },
		{ "memlock", "require or try" },
		{ "checksum", "yes or no" },
		{ "strict_namespaces", "yes or no" },
		{ "high_watermark", "a percentage, 0 to 100" },
		{ "low_watermark", "a percentage, 0 to 100" },
		{ "lease_max_ms", "milliseconds, at least 1" },
		{ "busy_poll_us", "microseconds, 0 to 1000000" },
		{ "max_clients", "1 to 65536" },
		{ "max_pending", "1 to 4096" },
		{ "max_pending_per_uid", "1 to 4096" },
		{ "handshake_timeout_ms", "1 to 60000" },
		{ "max_pins", "1 to 16777216" },
		{ "max_lookup_keys", "1 to 67108864" },
		{ "log_level", "err, warning, notice, info or debug" },
		{ "allow_uids", "user names or uids, comma-separated" },
		{ "allow_gids", "group names or gids, comma-separated" },
		{ "admin_uids", "user names or uids, comma-separated" },
		{ "policy", "a policy (docs/policies.md), such as int8 or kivi:kbits=4,vbits=4" },
		{ "listen", "IPV4:PORT, such as 127.0.0.1:9464" },
		{ "remote", "off, evicted or all" },
		{ "redis", "host:port,host:port,... (cluster seeds) or unix:/path" },
		{ "connect_timeout_ms", "1 to 60000" },
		{ "op_timeout_ms", "1 to 60000" },
		{ "ttl", "seconds, 0 (none) to 31536000" },
		{ "queue", "a size such as 256M" },
		{ "read_replicas", "yes or no" },
		{ "devices", "all, none, or device ordinals 0 to 15, comma-separated" },
	};

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++)
		if (!strcmp(forms[i].key, k))
			return forms[i].what;
	return "invalid value";
}

int kvcd_parse_gpus(struct kvcd_config *c, const char *v)
{
	char buf[128], *save = NULL;
	unsigned n = 0;
	int dev[KVCD_MAX_GPUS];

	if (!strcmp(v, "all") || !strcmp(v, "none")) {
		c->gpu_all = !strcmp(v, "all");
		c->gpu_ndev = 0;
		return 0;
	}
	if (strlen(v) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, v);
	for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
		unsigned d;

		if (parse_uint(t, KVCD_MAX_GPUS - 1, &d) || n == KVCD_MAX_GPUS)
			return -EINVAL;
		for (unsigned i = 0; i < n; i++)
			if (dev[i] == (int)d)
				return -EINVAL; /* named twice */
		dev[n++] = (int)d;
	}
	if (!n)
		return -EINVAL;
	c->gpu_all = false;
	c->gpu_ndev = n;
	memcpy(c->gpu_dev, dev, n * sizeof(dev[0]));
	return 0;
}

struct load_ctx {
	struct kvcd_config *c;
	const char *path;
	int err;
};

static int on_kv(void *user, const char *section, const char *k, const char *v)
{
	struct load_ctx *x = user;
	int err = -ENOENT;

	if (!strcmp(section, "kvcd")) {
		err = set_daemon_key(x->c, k, v);
	} else if (!strcmp(section, "remote")) {
		struct kvcd_config *c = x->c;

		if (!strcmp(k, "redis"))
			err = set_str(c->remote_redis, sizeof(c->remote_redis), v);
		else if (!strcmp(k, "user"))
			err = set_str(c->remote_user, sizeof(c->remote_user), v);
		else if (!strcmp(k, "password"))
			err = set_str(c->remote_password, sizeof(c->remote_password), v);
		else if (!strcmp(k, "connect_timeout_ms"))
			err = parse_positive(v, 60000, &c->remote_connect_ms);
		else if (!strcmp(k, "op_timeout_ms"))
			err = parse_positive(v, 60000, &c->remote_op_ms);
		else if (!strcmp(k, "ttl"))
			err = parse_uint(v, 365u * 86400, &c->remote_ttl);
		else if (!strcmp(k, "queue"))
			err = kvcd_parse_size(v, &c->remote_queue);
		else if (!strcmp(k, "read_replicas"))
			err = parse_bool(v, &c->remote_read_replicas);
	} else if (!strcmp(section, "gpu")) {
		if (!strcmp(k, "devices"))
			err = kvcd_parse_gpus(x->c, v);
		else if (!strcmp(k, "staging_size"))
			err = kvcd_parse_size(v, &x->c->gpu_staging_default);
		else if (!strcmp(k, "staging_max"))
			err = kvcd_parse_size(v, &x->c->gpu_staging_max);
		else if (!strcmp(k, "pool_size"))
			err = kvcd_parse_size(v, &x->c->gpu_pool_size);
	} else if (!strcmp(section, "metrics")) {
		if (!strcmp(k, "listen"))
			err = set_str(x->c->metrics_listen, sizeof(x->c->metrics_listen), v);
	} else if (!strncmp(section, "namespace ", 10)) {
		struct kvcd_ns_acl *a = ns_section(x->c, section + 10);

		if (!a)
			err = -E2BIG;
		else if (!strcmp(k, "allow_uids"))
			err = parse_ids(v, false, a->uids, &a->nuids);
		else if (!strcmp(k, "allow_gids"))
			err = parse_ids(v, true, a->gids, &a->ngids);
		else if (!strcmp(k, "policy") && !(err = parse_policy(v, &a->policy)))
			a->has_policy = true;
		else if (!strcmp(k, "quota"))
			err = kvcd_parse_size(v, &a->quota) || !a->quota ? -EINVAL : 0;
		else if (!strcmp(k, "remote"))
			err = (a->remote = !strcmp(v, "off")	   ? KVCD_REMOTE_OFF
					   : !strcmp(v, "evicted") ? KVCD_REMOTE_EVICTED
					   : !strcmp(v, "all")	   ? KVCD_REMOTE_ALL
								   : -2) == -2
				      ? -EINVAL
				      : 0;
	}
	if (err) {
		bool ids = strstr(k, "_uids") || strstr(k, "_gids");

		kvcd_log(LOG_ERR, "%s: [%s] %s = %s: %s%s", x->path, section, k, v,
			 err == -ENOENT	  ? (ids ? "no such user or group" : "unknown key")
			 : err == -EINVAL ? "expected "
					  : strerror(-err),
			 err == -EINVAL ? expected(k) : "");
		x->err = -EINVAL;
	}
	return 1;
}

int kvcd_config_load(struct kvcd_config *c, const char *path)
{
	struct load_ctx x = { c, path, 0 };
	int r = ini_parse(path, on_kv, &x);

	if (r == -1) {
		kvcd_log(LOG_ERR, "cannot open config %s: %s", path, strerror(errno));
		return -ENOENT;
	}
	if (r > 0) {
		kvcd_log(LOG_ERR, "%s:%d: syntax error", path, r);
		return -EINVAL;
	}
	return x.err;
}

int kvcd_config_check(const struct kvcd_config *c)
{
	const char *why = NULL;
	char buf[160];

	if (c->low_wm > c->high_wm) {
		snprintf(buf, sizeof(buf), "low_watermark (%u) is above high_watermark (%u)",
			 c->low_wm, c->high_wm);
		why = buf;
	} else if (c->staging_default > c->staging_max) {
		snprintf(buf, sizeof(buf),
			 "staging_size (%llu) is larger than staging_max (%llu): every attach "
			 "that takes the default would fail",
			 (unsigned long long)c->staging_default,
			 (unsigned long long)c->staging_max);
		why = buf;
	} else if (c->gpu_staging_default > c->gpu_staging_max) {
		snprintf(buf, sizeof(buf),
			 "[gpu] staging_size (%llu) is larger than its staging_max (%llu)",
			 (unsigned long long)c->gpu_staging_default,
			 (unsigned long long)c->gpu_staging_max);
		why = buf;
	} else if (c->gpu_pool_size && c->gpu_pool_size < (2u << 20)) {
		why = "[gpu] pool_size: 0 (no GPU pool) or at least 2M, a device's allocation "
		      "granularity";
	} else if (!c->max_clients || !c->max_pending || !c->max_pending_per_uid) {
		why = "max_clients, max_pending and max_pending_per_uid must be at least 1";
	} else if (c->max_pending_per_uid > c->max_pending) {
		snprintf(buf, sizeof(buf), "max_pending_per_uid (%u) is above max_pending (%u)",
			 c->max_pending_per_uid, c->max_pending);
		why = buf;
	} else if (c->pool_size < (1u << 20)) {
		why = "pool_size must be at least 1M";
	}
	for (unsigned i = 0; !why && i < c->nns; i++)
		if (c->ns[i].quota && c->ns[i].quota < (1u << 20)) {
			snprintf(buf, sizeof(buf), "[namespace %s] quota must be at least 1M",
				 c->ns[i].name);
			why = buf;
		}
	if (why) {
		kvcd_log(LOG_ERR, "configuration: %s", why);
		return -EINVAL;
	}
	return 0;
}

bool kvcd_config_admin(const struct kvcd_config *c, uid_t uid, uid_t euid)
{
	if (uid == 0 || uid == euid)
		return true;
	for (unsigned i = 0; i < c->nadmin; i++)
		if (c->admin_uids[i] == uid)
			return true;
	return false;
}

const struct kvcd_policy *kvcd_config_policy(const struct kvcd_config *c, const char *ns)
{
	const struct kvcd_ns_acl *a = kvcd_config_ns(c, ns);

	return a && a->has_policy ? &a->policy : &c->policy;
}

const struct kvcd_ns_acl *kvcd_config_ns(const struct kvcd_config *c, const char *ns)
{
	for (unsigned i = 0; i < c->nns; i++)
		if (!strcmp(c->ns[i].name, ns))
			return &c->ns[i];
	return NULL;
}

/* A listed namespace admits exactly its uids and gids; an unlisted one admits everyone who
 * can open the socket, unless strict_namespaces is set. */
bool kvcd_config_allows(const struct kvcd_config *c, const char *ns, uid_t uid, gid_t gid,
			const gid_t *groups, unsigned ngroups)
{
	const struct kvcd_ns_acl *a = kvcd_config_ns(c, ns);

	if (!a)
		return !c->strict_ns;
	if (!a->nuids && !a->ngids)
		return true; /* listed for its policy only: no access control */
	for (unsigned i = 0; i < a->nuids; i++)
		if (a->uids[i] == uid)
			return true;
	for (unsigned i = 0; i < a->ngids; i++) {
		if (a->gids[i] == gid)
			return true;
		for (unsigned j = 0; j < ngroups; j++)
			if (a->gids[i] == groups[j])
				return true;
	}
	return false;
}
