/* basis.c - the learned bases of learned= policies (codec.h, Palu/LoRC-style projections).
 *
 * CALIBRATE learns a basis from a namespace's raw blocks and keeps it as a block of that
 * namespace under the key (KVCP_BASIS_KEY_HI, version), layout.codec KVCP_CODEC_BASIS. As a
 * pool block it is checksummed, charged to the namespace and kept across restarts as every
 * block is (the pools are); kvcd holds a reference on each, which eviction and RECOMPRESS
 * respect, and clients cannot store, fetch, delete or pin such keys. A namespace keeps its
 * KVCD_BASES_MAX newest bases: a STORE under learned= uses the newest, a FETCH the one its
 * block names, and a block whose basis was dropped is removed when read (a miss).
 *
 * The table is under its own lock, always taken before the store's, never after. A CALIBRATE
 * learns on a thread of its own (struct kvcd_cal_job), so that its worker serves its other
 * sessions meanwhile.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvcd.h"

static struct kvcp_key basis_key(uint32_t version)
{
	struct kvcp_key k = { .hi = KVCP_BASIS_KEY_HI, .lo = version };

	return k;
}

bool kvcd_basis_key(const struct kvcp_key *k)
{
	return k->hi == KVCP_BASIS_KEY_HI;
}

/* Where a namespace's next basis goes in its table @at: a free slot, else its oldest. */
static struct kvcd_basis_slot *slot_for(struct kvcd_basis_slot *at)
{
	struct kvcd_basis_slot *low = &at[0];

	for (int i = 1; i < KVCD_BASES_MAX && low->b; i++)
		if (!at[i].b || at[i].version < low->version)
			low = &at[i];
	return low;
}

/* Start-up (one thread, the store lock held by kvcd_store_hold_hi): a basis block found in the
 * pools, referenced for us. Kept when its bytes check out and there is room. */
static bool adopt_one(void *arg, uint16_t ns, const struct kvcp_key *k, struct kvcd_block *b)
{
	struct kvcd_bases *t = arg;
	struct kvcd_basis_slot *at = t->at[ns], *low;
	struct kvcd_basis_hdr h;

	if (b->layout.codec != KVCP_CODEC_BASIS || kvcd_basis_check(b->data, b->stored))
		return false;
	memcpy(&h, b->data, sizeof(h));
	if (h.version != k->lo)
		return false;
	low = slot_for(at);
	if (low->b && (low->version > h.version || t->ndropped == KVCD_BASES_DROPPED))
		return false;
	if (low->b)
		t->dropped[t->ndropped++] = low->b; /* released by the caller */
	low->b = b;
	low->version = h.version;
	return true;
}

int kvcd_bases_init(struct kvcd *d)
{
	struct kvcd_bases *t = &d->bases;
	unsigned n;

	memset(t->at, 0, sizeof(t->at));
	t->ndropped = 0;
	pthread_mutex_init(&t->lock, NULL);
	pthread_mutex_init(&t->calibrating, NULL);
	n = kvcd_store_hold_hi(&d->store, KVCP_BASIS_KEY_HI, adopt_one, t);
	/* more than KVCD_BASES_MAX in a namespace (not written by this kvcd): the older ones
	 * stay in the pool unheld, evictable like any block */
	for (unsigned i = 0; i < t->ndropped; i++)
		kvcd_store_put(&d->store, t->dropped[i], false);
	n -= t->ndropped;
	t->ndropped = 0;
	if (n)
		kvcd_log(LOG_INFO, "learned bases: %u kept from the pools", n);
	return 0;
}

void kvcd_bases_fini(struct kvcd *d)
{
	struct kvcd_bases *t = &d->bases;
	uint64_t t0 = kvcd_now_ns();
	bool said = false;

	/* a CALIBRATE still learning uses the store and the table: let it finish */
	while (__atomic_load_n(&t->running, __ATOMIC_ACQUIRE)) {
		if (!said && kvcd_now_ns() - t0 > 1000000000ull) {
			kvcd_log(LOG_NOTICE, "stopping: waiting for a CALIBRATE to finish");
			said = true;
		}
		usleep(1000);
	}

	for (unsigned ns = 0; ns < KVCD_STORE_NS; ns++)
		for (int i = 0; i < KVCD_BASES_MAX; i++)
			if (t->at[ns][i].b) {
				kvcd_store_put(&d->store, t->at[ns][i].b, false);
				t->at[ns][i].b = NULL;
			}
	pthread_mutex_destroy(&t->lock);
	pthread_mutex_destroy(&t->calibrating);
}

int kvcd_basis_get(struct kvcd *d, uint16_t ns, uint32_t version, struct kvcd_block **out)
{
	struct kvcd_bases *t = &d->bases;
	struct kvcd_basis_slot *best = NULL;

	pthread_mutex_lock(&t->lock);
	for (int i = 0; i < KVCD_BASES_MAX; i++) {
		struct kvcd_basis_slot *e = &t->at[ns][i];

		if (e->b && (version ? e->version == version : !best || e->version > best->version))
			best = e;
	}
	if (best)
		kvcd_store_hold(&d->store, best->b);
	*out = best ? best->b : NULL;
	pthread_mutex_unlock(&t->lock);
	return best ? 0 : -ENOKEY;
}

void kvcd_bases_stats(struct kvcd *d, const uint16_t *ids, struct kvcp_stats *st)
{
	struct kvcd_bases *t = &d->bases;

	pthread_mutex_lock(&t->lock);
	for (uint32_t i = 0; i < st->nns && i < KVCP_MAX_NS_STATS; i++) {
		struct kvcp_ns_bases *o = &st->ns_bases[i];

		for (int k = 0; k < KVCD_BASES_MAX; k++) {
			const struct kvcd_basis_slot *e = &t->at[ids[i]][k];

			if (!e->b)
				continue;
			o->count++;
			o->bytes += e->b->stored; /* fixed since its commit */
			o->newest = e->version > o->newest ? e->version : o->newest;
		}
	}
	pthread_mutex_unlock(&t->lock);
}

static bool same_shape(const struct kvcp_layout *a, const struct kvcp_layout *b)
{
	return a->dtype == b->dtype && a->layers == b->layers && a->kv_heads == b->kv_heads &&
	       a->head_dim == b->head_dim;
}

/* The namespace's raw blocks CALIBRATE reads: up to @want (0: no count) of the first shape
 * found, at most KVCD_BASIS_MAX_TOKENS tokens, referenced into @b. Returns how many. */
static uint32_t sources(struct kvcd *d, uint16_t ns, uint32_t want, struct kvcd_block **b)
{
	enum {
		LIST = 4096
	};
	struct kvcp_list_ent *e = malloc(LIST * sizeof(*e));
	struct kvcp_key *keys = malloc(LIST * sizeof(*keys));
	struct kvcp_layout shape; /* of the first source: every other must have it */
	uint32_t n = 0, m, got = 0;
	uint64_t tokens = 0;

	if (!e || !keys) {
		free(e);
		free(keys);
		return 0;
	}
	m = kvcd_store_list(&d->store, ns, 0, e, LIST);
	for (uint32_t i = 0; i < m && (!want || n < want) && tokens < KVCD_BASIS_MAX_TOKENS; i++) {
		const struct kvcp_layout *l = &e[i].layout;

		if (l->codec || kvcd_basis_key(&e[i].key) || (n && !same_shape(l, &shape)))
			continue;
		if (!n)
			shape = *l;
		keys[n++] = e[i].key;
		tokens += l->tokens;
	}
	kvcd_store_ref_many(&d->store, ns, keys, n, b);
	for (uint32_t i = 0; i < n; i++) { /* gone, rewritten or replaced since the list */
		if (b[i] && !b[i]->layout.codec && same_shape(&b[i]->layout, &shape))
			b[got++] = b[i];
		else if (b[i])
			kvcd_store_put(&d->store, b[i], false);
	}
	free(e);
	free(keys);
	return got;
}

/* The CALIBRATE of @j: the new basis's version (its size in j->bytes), or -errno. */
static int calibrate(struct kvcd_cal_job *j)
{
	struct kvcd *d = j->d;
	struct kvcd_bases *t = &d->bases;
	struct kvcd_basis_slot *at = t->at[j->ns_id];
	uint32_t want = j->arg & 0xffff, energy = j->arg >> 16, n, version = 1, old_version = 0;
	bool sum_on = __atomic_load_n(&d->cfg.checksum, __ATOMIC_RELAXED);
	struct kvcd_block **src = NULL, *b = NULL, *old = NULL;
	struct kvcp_layout *ls = NULL, l;
	const void **data = NULL;
	uint64_t *pos = NULL;
	struct kvcp_key key;
	void *basis = NULL;
	uint64_t len = 0;
	int err;

	src = calloc(4096, sizeof(*src));
	ls = calloc(4096, sizeof(*ls));
	data = calloc(4096, sizeof(*data));
	pos = calloc(4096, sizeof(*pos));
	err = src && ls && data && pos ? 0 : -ENOMEM;
	n = err ? 0 : sources(d, j->ns_id, want, src);
	if (!err && !n)
		err = -ENOENT; /* no raw block to learn from */
	if (!err && j->weight && j->wlayers != src[0]->layout.layers)
		err = -EINVAL; /* weights for another model */
	/* one CALIBRATE at a time, so versions stay unique; the table's lock only while it is
	 * read and changed, so FETCHes and STOREs go on while a basis is learned */
	pthread_mutex_lock(&t->calibrating);
	pthread_mutex_lock(&t->lock);
	for (int i = 0; i < KVCD_BASES_MAX; i++)
		if (at[i].b && at[i].version >= version)
			version = at[i].version + 1;
	pthread_mutex_unlock(&t->lock);
	if (!err && j->rope) { /* keys before RoPE: only blocks whose chain says where they are */
		uint32_t k = 0;

		for (uint32_t i = 0; i < n; i++) {
			if (!kvcd_store_chain_pos(&d->store, src[i], &pos[k]))
				src[k++] = src[i];
			else
				kvcd_store_put(&d->store, src[i], false);
		}
		n = k;
		err = n ? 0 : -ENOENT;
	}
	for (uint32_t i = 0; i < n; i++) {
		ls[i] = src[i]->layout;
		data[i] = src[i]->data;
	}
	if (!err) {
		struct kvcd_cal_opts o = { .weight = j->weight, .rope = j->rope, .pos = pos };

		err = kvcd_basis_learn(kvcd_isa_best(), n, ls, data, energy, &o, version, &basis,
				       &len);
	}
	for (uint32_t i = 0; i < n; i++)
		kvcd_store_put(&d->store, src[i], false);
	if (!err) {
		struct kvcd_basis_hdr h;

		memcpy(&h, basis, sizeof(h));
		kvcd_basis_seal(basis, XXH3_64bits(basis, len) ^ h.version);
		l = (struct kvcp_layout){ .dtype = KVCP_F32,
					  .codec = KVCP_CODEC_BASIS,
					  .layers = h.layers,
					  .kv_heads = h.kv_heads,
					  .head_dim = h.head_dim,
					  .tokens = 1 };
		key = basis_key(version);
		err = kvcd_store_reserve(&d->store, j->ns_id, &key, &l, len, j->order, j->norder,
					 &b);
	}
	if (!err) {
		uint64_t sum = sum_on ? kvcd_copy_sum(kvcd_isa_best(), b->data, basis, len) : 0;
		struct kvcd_basis_slot *low;

		if (!sum_on)
			memcpy(b->data, basis, len);
		b->stored = len;
		kvcd_store_hold(&d->store, b); /* ours from before it is visible */
		kvcd_store_commit(&d->store, b, true, sum_on, sum);
		pthread_mutex_lock(&t->lock);
		low = slot_for(at);
		old = low->b;
		old_version = low->version;
		low->b = b;
		low->version = version;
		pthread_mutex_unlock(&t->lock);
		j->bytes = len;
	}
	pthread_mutex_unlock(&t->calibrating);
	if (old) { /* the oldest basis goes; blocks that name it are removed when read */
		key = basis_key(old_version);
		kvcd_store_delete(&d->store, j->ns_id, &key);
		kvcd_store_put(&d->store, old, false);
		kvcd_log(LOG_INFO, "namespace %s: basis %u dropped for basis %u", j->ns,
			 old_version, version);
	}
	free(basis);
	free(src);
	free(ls);
	free(data);
	free(pos);
	return err ? err : (int)version;
}

void kvcd_cal_free(struct kvcd_cal_job *j)
{
	kvcd_store_ns_put(&j->d->store, j->ns_id);
	free(j);
}

void kvcd_cal_release(struct kvcd_cal_job *j)
{
	if (!kvcd_job_orphan(&j->done)) /* already done: its thread is through with it */
		kvcd_cal_free(j);
}

static void *calibrate_main(void *arg)
{
	struct kvcd_cal_job *j = arg;
	struct kvcd_bases *t = &j->d->bases;

	j->res = calibrate(j);
	if (!kvcd_job_deliver(&j->done, j->wake)) { /* its session went away: nobody to tell */
		if (j->res < 0)
			kvcd_log(LOG_WARNING, "namespace %s: CALIBRATE failed: %s", j->ns,
				 strerror(-j->res));
		else
			kvcd_log(LOG_INFO, "namespace %s: basis %d learned (%llu bytes)", j->ns,
				 j->res, (unsigned long long)j->bytes);
		kvcd_cal_free(j);
	}
	__atomic_fetch_sub(&t->running, 1, __ATOMIC_RELEASE);
	return NULL;
}

int kvcd_calibrate(struct kvcd *d, struct kvcd_session *s, uint32_t arg, const char *req,
		   uint64_t len, struct kvcd_cal_job **out)
{
	struct kvcp_calibrate c = { 0 };
	struct kvcd_cal_job *j;
	pthread_attr_t attr;
	pthread_t th;
	int err;

	/* the request's own checks first, so that they are the same for every client */
	if (!(arg >> 16) || arg >> 16 > 100)
		return -EINVAL; /* no energy, or more than all of it */
	if (len) {
		if (len < sizeof(c))
			return -EINVAL;
		memcpy(&c, req, sizeof(c));
		if (c.magic != KVCP_CALIBRATE_MAGIC || c.reserved || c.pad ||
		    c.layers > UINT16_MAX || c.rope > 100000000 ||
		    len != sizeof(c) + 8ull * c.layers)
			return -EINVAL;
	}
	if (!s->admin)
		return -EPERM;
	j = calloc(1, sizeof(*j) + 8ull * c.layers);
	if (!j)
		return -ENOMEM;
	if (c.layers) { /* read once: the client may write its staging while the job learns */
		j->weight = (float *)(j + 1);
		j->wlayers = c.layers;
		memcpy(j->weight, req + sizeof(c), 8ull * c.layers);
		for (uint32_t i = 0; i < 2 * c.layers; i++)
			if (!isfinite(j->weight[i]) || !(j->weight[i] > 0)) {
				free(j);
				return -EINVAL;
			}
	}
	j->rope = c.rope;
	j->d = d;
	j->ns_id = s->ns_id;
	j->arg = arg;
	memcpy(j->order, s->order, sizeof(j->order));
	j->norder = s->norder;
	snprintf(j->ns, sizeof(j->ns), "%s", s->ns);
	j->wake = &d->workers[s->worker].wake;
	kvcd_store_ns_hold(&d->store, s->ns_id); /* the session may go before the job is done */
	__atomic_fetch_add(&d->bases.running, 1, __ATOMIC_ACQ_REL);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	err = -pthread_create(&th, &attr, calibrate_main, j);
	pthread_attr_destroy(&attr);
	if (err) {
		__atomic_fetch_sub(&d->bases.running, 1, __ATOMIC_RELEASE);
		kvcd_cal_free(j);
		return err == -EAGAIN ? -EAGAIN : -ENOMEM;
	}
	*out = j;
	return -EINPROGRESS;
}
