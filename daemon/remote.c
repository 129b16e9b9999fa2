/* remote.c - the remote tier: a Redis Cluster (or one Redis) under the local pools, reached
 * through hiredis. The only file that speaks RESP.
 *
 * What goes there: blocks kvcd evicts (namespace `remote = evicted`, the default when a
 * remote is configured) and, with `remote = all`, every block it stores, in their compressed
 * pool form behind a checked header (struct kvcd_rhdr), with an expiry (`ttl`). What comes
 * back: on a local miss a FETCH, and a LOOKUP for the chunks after the local prefix, ask the
 * cluster; blocks that check out enter the local pool and are served from there.
 *
 * A value enters the pool on this thread, straight from hiredis's read buffer as its reply is
 * parsed (a reader whose createString adopts it: sink_string), while the replies after it are
 * still arriving; no reply object holds a copy of it, and the worker only serves it.
 *
 * Keys are "kvcd:<XXH64 of the namespace, hex>:<the block's 128-bit key, hex>": namespaces are
 * apart in the key space, and no braces, so no hash tag: a chain's blocks spread over every
 * master as the CRC16 slots fall. We chose that over tagging a chain onto one node because a
 * chain has no name of its own to tag with (keys are chained hashes; a block does not know
 * its chain's first key), because one node per chain makes long shared prefixes (a system
 * prompt every request starts with) a hot spot, and because a chain is fetched with one
 * pipelined batch per node anyway: every request goes out before any reply is read.
 *
 * One thread does all remote work, so the ring workers never wait on the network: a worker
 * that needs blocks queues a get and serves its other rings until the thread wakes it (its
 * wake futex). Puts wait in a queue bounded in bytes; when it is full they are dropped and
 * counted. Gets go before puts. Node failures and redirections (MOVED: update the slot map;
 * ASK: ASKING and retry there, once) are handled here; what still fails counts as a miss.
 */
#include <errno.h>
#include <signal.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <xxhash.h>

#include "kvcd.h"

#define RHDR_MAGIC   0x5243564bu /* "KVCR" */
#define RHDR_VERSION 1u
#define NSLOTS	     16384
#define MAX_NODES    64
#define PUT_BATCH    16

/* The header before a block's bytes in the cluster. */
struct kvcd_rhdr {
	uint32_t magic, version;
	uint64_t ns_hash; /* XXH64 of the namespace name */
	struct kvcp_key key;
	struct kvcp_layout layout;
	uint64_t stored;   /* bytes after the header */
	uint64_t checksum; /* kvcd_copy_sum of them */
	uint64_t hdr_sum;  /* XXH64 of this header with hdr_sum 0 */
};

struct rnode {
	char host[64];
	int port;
	redisContext *c;
	unsigned gen; /* bumped when the connection is closed: its pipelined replies are gone */
};

struct rput {
	struct rput *next;
	char key[64];
	size_t len;
	char val[]; /* header + bytes */
};

struct kvcd_remote {
	struct kvcd *d;
	pthread_t thread;
	pthread_mutex_t lock; /* queues and stats */
	pthread_cond_t cond;
	bool stop, started;
	/* the cluster, as the thread knows it */
	bool cluster, map_dirty;
	struct rnode nodes[MAX_NODES];
	unsigned nnodes;
	uint8_t slot_node[NSLOTS];    /* node index + 1; 0: unknown */
	uint8_t slot_replica[NSLOTS]; /* a replica of it, for read_replicas; 0: none */
	uint64_t next_refresh_ns;
	/* queues */
	struct kvcd_rget *gets, **gets_tail;
	struct rput *puts, **puts_tail;
	size_t put_bytes;
	struct kvcp_remote_stats st;
	struct kvcd_hist lat; /* get batches */
};

/* hiredis's reply functions, and ours (sink_string) that every connection reads with */
static redisReplyObjectFunctions plain_fns, sink_fns;

/* ---- keys and slots ------------------------------------------------------------------------ */

/* CRC16-CCITT (XMODEM), as Redis Cluster hashes keys; a table, filled at start from the
 * bitwise definition, since every GET of a batch hashes its key. */
static uint16_t crc16_tab[256];

static void crc16_init(void)
{
	for (unsigned v = 0; v < 256; v++) {
		uint16_t crc = (uint16_t)(v << 8);

		for (int b = 0; b < 8; b++)
			crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
		crc16_tab[v] = crc;
	}
}

static uint16_t crc16(const char *buf, size_t len)
{
	uint16_t crc = 0;

	for (size_t i = 0; i < len; i++)
		crc = (uint16_t)(crc << 8 ^ crc16_tab[(crc >> 8 ^ (unsigned char)buf[i]) & 0xff]);
	return crc;
}

/* The slot of @key, hash tags included (kvcd's own keys have none). */
static unsigned key_slot(const char *key)
{
	const char *open = strchr(key, '{'), *close = open ? strchr(open + 1, '}') : NULL;

	if (open && close && close > open + 1)
		return crc16(open + 1, (size_t)(close - open - 1)) % NSLOTS;
	return crc16(key, strlen(key)) % NSLOTS;
}

static void key_name(char out[64], uint64_t ns_hash, const struct kvcp_key *k)
{
	snprintf(out, 64, "kvcd:%016llx:%016llx%016llx", (unsigned long long)ns_hash,
		 (unsigned long long)k->hi, (unsigned long long)k->lo);
}

uint64_t kvcd_remote_ns_hash(const char *ns)
{
	return XXH64(ns, strlen(ns), 0x6b766364);
}

/* ---- connections --------------------------------------------------------------------------- */

static struct timeval ms_tv(unsigned ms)
{
	return (struct timeval){ ms / 1000, (long)(ms % 1000) * 1000 };
}

static void node_close(struct rnode *n)
{
	if (n->c)
		redisFree(n->c);
	n->c = NULL;
	n->gen++;
}

/* A live connection to node @n, or NULL. */
static redisContext *node_conn(struct kvcd_remote *r, struct rnode *n)
{
	const struct kvcd_config *c = &r->d->cfg;

	if (n->c && !n->c->err)
		return n->c;
	node_close(n);
	n->c = n->port ? redisConnectWithTimeout(n->host, n->port, ms_tv(c->remote_connect_ms))
		       : redisConnectUnixWithTimeout(n->host, ms_tv(c->remote_connect_ms));
	if (!n->c || n->c->err) {
		node_close(n);
		return NULL;
	}
	redisSetTimeout(n->c, ms_tv(c->remote_op_ms));
	n->c->reader->fn = &sink_fns;
	if (c->remote_password[0]) {
		redisReply *a = c->remote_user[0]
					? redisCommand(n->c, "AUTH %s %s", c->remote_user,
						       c->remote_password)
					: redisCommand(n->c, "AUTH %s", c->remote_password);
		bool ok = a && a->type != REDIS_REPLY_ERROR;

		if (a)
			freeReplyObject(a);
		if (!ok) {
			kvcd_log(LOG_WARNING, "remote: AUTH refused by %s:%d", n->host, n->port);
			node_close(n);
			return NULL;
		}
	}
	if (c->remote_read_replicas && n->port) { /* a replica then serves reads of its slots */
		redisReply *ro = redisCommand(n->c, "READONLY");

		if (ro)
			freeReplyObject(ro);
	}
	return n->c;
}

/* The node at host:port, added when new. */
static int node_find(struct kvcd_remote *r, const char *host, int port)
{
	for (unsigned i = 0; i < r->nnodes; i++)
		if (r->nodes[i].port == port && !strcmp(r->nodes[i].host, host))
			return (int)i;
	if (r->nnodes == MAX_NODES || strlen(host) >= sizeof(r->nodes[0].host))
		return -1;
	snprintf(r->nodes[r->nnodes].host, sizeof(r->nodes[0].host), "%s", host);
	r->nodes[r->nnodes].port = port;
	r->nodes[r->nnodes].c = NULL;
	return (int)r->nnodes++;
}

/* "host:port" -> the node's index. */
static int node_of_addr(struct kvcd_remote *r, const char *addr)
{
	char host[64];
	const char *colon = strrchr(addr, ':');

	if (!colon || (size_t)(colon - addr) >= sizeof(host))
		return -1;
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	return node_find(r, host, atoi(colon + 1));
}

/* Ask the nodes we know (the seeds first) for the slot map. Returns 0 or -EIO. */
static int refresh_map(struct kvcd_remote *r)
{
	unsigned known = r->nnodes;

	r->next_refresh_ns = kvcd_now_ns() + 1000000000ull;
	for (unsigned i = 0; i < known; i++) {
		redisContext *c = node_conn(r, &r->nodes[i]);
		redisReply *rep;

		if (!c)
			continue;
		rep = redisCommand(c, "CLUSTER SLOTS");
		if (!rep) {
			node_close(&r->nodes[i]);
			continue;
		}
		if (rep->type == REDIS_REPLY_ERROR &&
		    strstr(rep->str, "cluster support disabled")) {
			/* a single Redis: it holds every slot */
			memset(r->slot_node, (int)i + 1, sizeof(r->slot_node));
			r->cluster = false;
			r->map_dirty = false;
			freeReplyObject(rep);
			return 0;
		}
		if (rep->type == REDIS_REPLY_ARRAY && rep->elements) {
			memset(r->slot_node, 0, sizeof(r->slot_node));
			memset(r->slot_replica, 0, sizeof(r->slot_replica));
			for (size_t j = 0; j < rep->elements; j++) {
				redisReply *e = rep->element[j];
				int n;

				if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
				    e->element[2]->type != REDIS_REPLY_ARRAY ||
				    e->element[2]->elements < 2)
					continue;
				int rep_n = -1;

				n = node_find(r, e->element[2]->element[0]->str,
					      (int)e->element[2]->element[1]->integer);
				if (e->elements > 3 && e->element[3]->type == REDIS_REPLY_ARRAY &&
				    e->element[3]->elements >= 2)
					rep_n = node_find(r, e->element[3]->element[0]->str,
							  (int)e->element[3]->element[1]->integer);
				for (long long s = e->element[0]->integer;
				     n >= 0 && s <= e->element[1]->integer && s < NSLOTS; s++) {
					r->slot_node[s] = (uint8_t)(n + 1);
					r->slot_replica[s] = (uint8_t)(rep_n + 1);
				}
			}
			r->cluster = true;
			r->map_dirty = false;
			freeReplyObject(rep);
			return 0;
		}
		freeReplyObject(rep);
	}
	return -EIO;
}

/* ---- requests ------------------------------------------------------------------------------ */

/* Run one command for @key, following MOVED and ASK. The reply, or NULL. */
static redisReply *command(struct kvcd_remote *r, const char *key, const char *fmt, const char *val,
			   size_t len)
{
	int n = r->slot_node[key_slot(key)] - 1;
	bool asking = false;

	for (int tries = 0; tries < 4; tries++) {
		redisContext *c;
		redisReply *rep;

		if (n < 0 || !(c = node_conn(r, &r->nodes[n]))) {
			r->map_dirty = true;
			return NULL;
		}
		if (asking) {
			redisReply *a = redisCommand(c, "ASKING");

			if (a)
				freeReplyObject(a);
		}
		rep = val ? redisCommand(c, fmt, key, val, len, r->d->cfg.remote_ttl)
			  : redisCommand(c, fmt, key);
		if (!rep) {
			node_close(&r->nodes[n]);
			r->map_dirty = true;
			return NULL;
		}
		if (rep->type != REDIS_REPLY_ERROR)
			return rep;
		asking = !strncmp(rep->str, "ASK ", 4);
		if (asking || !strncmp(rep->str, "MOVED ", 6)) {
			const char *addr = strchr(strchr(rep->str, ' ') + 1, ' ');

			n = addr ? node_of_addr(r, addr + 1) : -1;
			if (!asking) { /* the map is stale: use the new owner, refresh later */
				r->slot_node[key_slot(key)] = (uint8_t)(n + 1);
				r->map_dirty = true;
			}
			freeReplyObject(rep);
			continue;
		}
		return rep; /* another error: the caller counts it */
	}
	return NULL;
}

/* Check the header of a value read back for key @k: magic, version, its own checksum, the
 * namespace, the key and the size. The bytes' checksum is checked as they are copied into the
 * pool (ops.c), in the same pass. */
static bool header_ok(const char *v, size_t len, uint64_t ns_hash, const struct kvcp_key *k)
{
	struct kvcd_rhdr h;
	uint64_t sum;

	if (len < sizeof(h))
		return false;
	memcpy(&h, v, sizeof(h));
	sum = h.hdr_sum;
	h.hdr_sum = 0;
	return h.magic == RHDR_MAGIC && h.version == RHDR_VERSION &&
	       XXH64(&h, sizeof(h), 0) == sum && h.ns_hash == ns_hash && h.key.lo == k->lo &&
	       h.key.hi == k->hi && h.stored == len - sizeof(h) && kvcp_layout_bytes(&h.layout) &&
	       (h.layout.codec || h.stored == kvcp_layout_bytes(&h.layout));
}

/* Value @i of @g, read back as @v (@len bytes), into the pool, its bytes checked as they are
 * copied: 0 (also when a client stored it meanwhile), -EBADMSG when the header or the bytes
 * do not check out, or the error of a pool with no room for it. */
static int adopt(struct kvcd_rget *g, unsigned i, const char *v, size_t len)
{
	struct kvcd_rhdr h;
	struct kvcd_block *b;
	bool ok;
	int err;

	if (!header_ok(v, len, g->ns_hash, &g->keys[i]))
		return -EBADMSG;
	memcpy(&h, v, sizeof(h));
	err = kvcd_store_reserve(g->store, g->ns_id, &g->keys[i], &h.layout, h.stored, g->order,
				 g->norder, &b);
	if (err)
		return err == -EEXIST ? 0 : err;
	b->stored = h.stored;
	/* the copy and the check in one pass: bytes that do not match never become visible */
	ok = kvcd_copy_sum(kvcd_isa_best(), b->data, v + sizeof(h), h.stored) == h.checksum;
	kvcd_store_commit(g->store, b, ok, ok, h.checksum);
	return ok ? 0 : -EBADMSG;
}

/* What the reader is parsing: the reply to GET @i of @g. */
struct sink {
	struct kvcd_rget *g;
	unsigned i;
	bool seen; /* a value came, and g->err[i] says what became of it */
};

/* hiredis's createString for every connection: a value read for a sink is adopted from the
 * read buffer and stands as an empty string reply of its length; the rest as hiredis does. */
static void *sink_string(const redisReadTask *t, char *str, size_t len)
{
	struct sink *k = t->privdata;
	redisReply *rep;

	if (!k || t->parent || t->type != REDIS_REPLY_STRING)
		return plain_fns.createString(t, str, len);
	rep = calloc(1, sizeof(*rep));
	if (!rep)
		return NULL; /* hiredis: out of memory, the connection fails */
	rep->type = REDIS_REPLY_STRING;
	rep->len = len;
	k->g->err[k->i] = adopt(k->g, k->i, str, len);
	k->seen = true;
	return rep;
}

/* Returns false when hiredis could not make a reader (out of memory). */
static bool sink_init(void)
{
	redisReader *rd = redisReaderCreate();

	if (!rd)
		return false;
	plain_fns = *rd->fn; /* hiredis's own functions, to fall back on */
	redisReaderFree(rd);
	sink_fns = plain_fns;
	sink_fns.createString = sink_string;
	return true;
}

/* Every queued get, pipelined: all GETs go out to their nodes before a reply is read. */
static void run_gets(struct kvcd_remote *r, struct kvcd_rget *list)
{
	uint64_t t0 = kvcd_now_ns();

	for (struct kvcd_rget *g = list; g; g = g->next) {
		for (unsigned i = 0; i < g->n; i++) {
			char key[64], cmd[96];
			unsigned slot;
			int n, len;

			key_name(key, g->ns_hash, &g->keys[i]);
			slot = key_slot(key);
			n = r->slot_node[slot] - 1;
			if (r->d->cfg.remote_read_replicas && r->slot_replica[slot])
				n = r->slot_replica[slot] - 1; /* a redirect falls back */
			/* the RESP of GET written out here: hiredis's printf-like formatting would
			 * cost more than the rest of the batch's preparation */
			len = snprintf(cmd, sizeof(cmd), "*2\r\n$3\r\nGET\r\n$%zu\r\n%s\r\n",
				       strlen(key), key);
			g->sent[i] = -1;
			if (n >= 0 && node_conn(r, &r->nodes[n]) &&
			    redisAppendFormattedCommand(r->nodes[n].c, cmd, (size_t)len) ==
				    REDIS_OK) {
				g->sent[i] = n;
				g->gen[i] = r->nodes[n].gen;
			}
		}
	}
	/* hiredis sends a context's buffer when a reply is first read from it: send every
	 * node's now, so that the nodes work at the same time */
	for (unsigned i = 0; i < r->nnodes; i++) {
		int done = 0;

		while (r->nodes[i].c && !done)
			if (redisBufferWrite(r->nodes[i].c, &done) != REDIS_OK)
				break;
	}
	for (struct kvcd_rget *g = list; g; g = g->next) {
		for (unsigned i = 0; i < g->n; i++) {
			redisReply *rep = NULL;
			char key[64];

			key_name(key, g->ns_hash, &g->keys[i]);
			struct rnode *nd = g->sent[i] >= 0 ? &r->nodes[g->sent[i]] : NULL;

			struct sink k = { g, i, false };

			g->err[i] = -ENOENT;
			/* read the pipelined reply only from the connection it was sent on: one
			 * closed since (a failure earlier in this batch) has none to give */
			if (nd && nd->c && nd->gen == g->gen[i]) {
				int ok;

				nd->c->reader->privdata = &k;
				ok = redisGetReply(nd->c, (void **)&rep);
				nd->c->reader->privdata = NULL;
				if (ok != REDIS_OK) {
					node_close(nd);
					r->map_dirty = true;
					rep = NULL;
				}
			}
			if (!rep || rep->type == REDIS_REPLY_ERROR) { /* redirected, or lost */
				if (rep)
					freeReplyObject(rep);
				rep = command(r, key, "GET %s", NULL, 0);
				if (rep && rep->type == REDIS_REPLY_STRING) {
					g->err[i] = adopt(g, i, rep->str, rep->len);
					k.seen = true;
				}
			}
			pthread_mutex_lock(&r->lock);
			r->st.gets++;
			if (k.seen && g->err[i] != -EBADMSG) /* checked, if perhaps with no room */
				r->st.bytes_in += rep->len;
			if (k.seen && !g->err[i])
				r->st.hits++;
			else if (k.seen && g->err[i] == -EBADMSG)
				r->st.rejected++;
			else if (rep && rep->type == REDIS_REPLY_NIL)
				r->st.misses++;
			else if (!k.seen)
				r->st.errors++;
			pthread_mutex_unlock(&r->lock);
			if (rep)
				freeReplyObject(rep);
		}
	}
	pthread_mutex_lock(&r->lock);
	r->lat.b[kvcd_hist_bucket(kvcd_now_ns() - t0)]++;
	pthread_mutex_unlock(&r->lock);
	for (struct kvcd_rget *g = list, *next; g; g = next) {
		next = g->next; /* the worker may free g as soon as it is delivered */
		if (!kvcd_job_deliver(&g->done, g->wake)) /* its session went away meanwhile */
			kvcd_rget_free(g);
	}
}

static void run_puts(struct kvcd_remote *r, struct rput *list)
{
	for (struct rput *p = list, *next; p; p = next) {
		redisReply *rep = command(r, p->key,
					  r->d->cfg.remote_ttl ? "SET %s %b EX %u" : "SET %s %b",
					  p->val, p->len);

		pthread_mutex_lock(&r->lock);
		if (rep && rep->type == REDIS_REPLY_STATUS) {
			r->st.puts++;
			r->st.bytes_out += p->len;
		} else {
			r->st.errors++;
		}
		pthread_mutex_unlock(&r->lock);
		if (rep)
			freeReplyObject(rep);
		next = p->next;
		free(p);
	}
}

/* Slots whose node is connected, for STATS (only this thread touches the nodes). */
static void count_slots(struct kvcd_remote *r)
{
	uint64_t ok = 0;

	for (unsigned s = 0; s < NSLOTS; s++) {
		int n = r->slot_node[s] - 1;

		ok += n >= 0 && r->nodes[n].c && !r->nodes[n].c->err;
	}
	pthread_mutex_lock(&r->lock);
	r->st.slots_ok = ok;
	r->st.nodes = r->nnodes;
	pthread_mutex_unlock(&r->lock);
}

static void *remote_main(void *arg)
{
	struct kvcd_remote *r = arg;
	bool was_up = true;

	for (;;) {
		struct kvcd_rget *gets;
		struct rput *puts = NULL, **tail = &puts;

		pthread_mutex_lock(&r->lock);
		while (!r->stop && !r->gets && !r->puts) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1; /* a periodic look at the map */
			if (pthread_cond_timedwait(&r->cond, &r->lock, &ts) == ETIMEDOUT)
				break;
		}
		if (r->stop) {
			pthread_mutex_unlock(&r->lock);
			return NULL;
		}
		gets = r->gets;
		r->gets = NULL;
		r->gets_tail = &r->gets;
		for (int i = 0; i < PUT_BATCH && r->puts; i++) { /* a few puts, then gets again */
			struct rput *p = r->puts;

			r->puts = p->next;
			r->put_bytes -= p->len;
			p->next = NULL;
			*tail = p;
			tail = &p->next;
		}
		if (!r->puts)
			r->puts_tail = &r->puts;
		pthread_mutex_unlock(&r->lock);
		if ((r->map_dirty && kvcd_now_ns() >= r->next_refresh_ns) || !r->nnodes) {
			bool up = refresh_map(r) == 0;

			if (up != was_up)
				kvcd_log(up ? LOG_NOTICE : LOG_WARNING, "remote: %s %s",
					 r->d->cfg.remote_redis,
					 up ? "reachable: slot map loaded"
					    : "unreachable; retrying");
			was_up = up;
		}
		if (gets)
			run_gets(r, gets);
		run_puts(r, puts);
		count_slots(r);
	}
}

/* ---- what the rest of kvcd calls ----------------------------------------------------------- */

int kvcd_remote_start(struct kvcd *d)
{
	struct kvcd_remote *r;
	char seeds[sizeof(d->cfg.remote_redis)], *save = NULL;
	sigset_t all, old;
	int err;

	if (!d->cfg.remote_redis[0])
		return 0;
	r = calloc(1, sizeof(*r));
	if (!r || !sink_init()) {
		free(r);
		return -ENOMEM;
	}
	crc16_init();
	r->d = d;
	r->gets_tail = &r->gets;
	r->puts_tail = &r->puts;
	r->map_dirty = true;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	snprintf(seeds, sizeof(seeds), "%s", d->cfg.remote_redis);
	for (char *t = strtok_r(seeds, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
		int n = !strncmp(t, "unix:", 5) ? node_find(r, t + 5, 0) : node_of_addr(r, t);

		if (n < 0) {
			kvcd_log(LOG_ERR,
				 "[remote] redis = %s: expected host:port,... or unix:/path",
				 d->cfg.remote_redis);
			free(r);
			return -EINVAL;
		}
	}
	if (refresh_map(r))
		kvcd_log(LOG_WARNING, "remote: %s unreachable at start: serving locally, retrying",
			 d->cfg.remote_redis);
	else
		kvcd_log(LOG_INFO, "remote: %s, %s", d->cfg.remote_redis,
			 r->cluster ? "a cluster" : "one Redis");
	count_slots(r);
	/* the thread takes no signal: kvcd's main thread reads them from its signalfd */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	err = pthread_create(&r->thread, NULL, remote_main, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		free(r);
		return -EAGAIN;
	}
	pthread_setname_np(r->thread, "kvcd-remote");
	r->started = true;
	d->remote = r;
	return 0;
}

void kvcd_remote_stop(struct kvcd *d)
{
	struct kvcd_remote *r = d->remote;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
	pthread_join(r->thread, NULL);
	while (r->puts) {
		struct rput *p = r->puts;

		r->puts = p->next;
		free(p);
	}
	for (struct kvcd_rget *g = r->gets, *next; g; g = next) { /* workers have stopped */
		next = g->next;
		kvcd_rget_release(g);
	}
	for (unsigned i = 0; i < r->nnodes; i++)
		node_close(&r->nodes[i]);
	d->remote = NULL;
	free(r);
}

void kvcd_remote_put(struct kvcd *d, const char *ns, const struct kvcp_key *key,
		     const struct kvcp_layout *l, const void *bytes, uint64_t stored)
{
	struct kvcd_remote *r = d->remote;
	struct kvcd_rhdr h = { .magic = RHDR_MAGIC,
			       .version = RHDR_VERSION,
			       .ns_hash = kvcd_remote_ns_hash(ns),
			       .key = *key,
			       .layout = *l,
			       .stored = stored };
	size_t len = sizeof(h) + stored;
	struct rput *p;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	if (r->put_bytes + len > d->cfg.remote_queue) {
		r->st.dropped++;
		pthread_mutex_unlock(&r->lock);
		return;
	}
	r->put_bytes += len; /* reserved before the copy: the copy is done unlocked */
	pthread_mutex_unlock(&r->lock);
	p = malloc(sizeof(*p) + len);
	if (!p) {
		pthread_mutex_lock(&r->lock);
		r->put_bytes -= len;
		r->st.dropped++;
		pthread_mutex_unlock(&r->lock);
		return;
	}
	h.checksum = kvcd_copy_sum(kvcd_isa_best(), p->val + sizeof(h), bytes, stored);
	h.hdr_sum = XXH64(&h, sizeof(h), 0);
	memcpy(p->val, &h, sizeof(h));
	key_name(p->key, h.ns_hash, key);
	p->len = len;
	p->next = NULL;
	pthread_mutex_lock(&r->lock);
	*r->puts_tail = p;
	r->puts_tail = &p->next;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

void kvcd_rget_free(struct kvcd_rget *g)
{
	kvcd_store_ns_put(g->store, g->ns_id);
	free(g);
}

void kvcd_rget_release(struct kvcd_rget *g)
{
	if (!kvcd_job_orphan(&g->done)) /* already done: the remote thread is through with it */
		kvcd_rget_free(g);
}

void kvcd_remote_get(struct kvcd *d, struct kvcd_rget *g)
{
	struct kvcd_remote *r = d->remote;

	g->done = 0;
	g->next = NULL;
	pthread_mutex_lock(&r->lock);
	*r->gets_tail = g;
	r->gets_tail = &g->next;
	pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

void kvcd_remote_stats(struct kvcd *d, struct kvcp_remote_stats *st)
{
	struct kvcd_remote *r = d->remote;
	uint64_t total = 0, seen = 0;

	memset(st, 0, sizeof(*st));
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	*st = r->st;
	st->enabled = 1;
	for (unsigned b = 0; b < KVCD_HIST; b++)
		total += r->lat.b[b];
	for (unsigned b = 0; b < KVCD_HIST && total; b++) {
		seen += r->lat.b[b];
		if (!st->get_p50_ns && seen * 2 > total)
			st->get_p50_ns = kvcd_hist_value(b);
		if (seen * 100 > total * 99) {
			st->get_p99_ns = kvcd_hist_value(b);
			break;
		}
	}
	pthread_mutex_unlock(&r->lock);
}
