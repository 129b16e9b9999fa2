/* ops.c - the request handlers: one function per operation, called by a worker for each
 * entry it took from a session's ring (kvcd_execute). A handler reads what the client wrote
 * (the entry, staging or scratch) once into its own memory, checks it, and calls the store
 * and the codec; it never touches the rings and never sleeps. Bad input is an error
 * completion (and a count on the session), never a crash.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvcd.h"

/* ---- copies ---------------------------------------------------------------------------------
 * With checksums on, the checksum is computed in the copy itself (sum.c): over the bytes
 * written to the pool on STORE, over the pool's bytes on FETCH. */

static uint64_t copy_sum(void *dst, const void *src, size_t n, bool sum)
{
	if (!sum) {
		memcpy(dst, src, n);
		return 0;
	}
	return kvcd_copy_sum(kvcd_isa_best(), dst, src, n);
}

/* The codec reads and writes f16, bf16 and f32 elements through typed pointers, so it is
 * only ever given addresses aligned for them (C makes a misaligned access undefined, even
 * where x86 tolerates it). A client may name any staging offset: a misaligned block goes
 * through an aligned copy. */
#define CODEC_ALIGN 8u

static bool misaligned(const void *p)
{
	return (uintptr_t)p % CODEC_ALIGN != 0;
}

/* ---- request execution ------------------------------------------------------------------- */

/* Decode block @b of namespace @ns into @dst (@cap bytes), with the basis it names when it
 * needs one. A block whose basis is gone can never be read again: it is removed, and the
 * read is a miss (-ENOENT). Otherwise as kvcd_codec_decode. */
static int decode_block(struct kvcd *d, uint16_t ns, const struct kvcp_key *key,
			const struct kvcd_block *b, void *dst, uint64_t cap, struct kvcp_layout *l)
{
	struct kvcd_block *basis = NULL;
	uint64_t id;
	/* only the sparse form carries a basis: other blocks' headers are parsed once, below */
	uint32_t version = b->layout.codec & KVCP_CODEC_SPARSE
				   ? kvcd_codec_basis_of(b->data, b->stored, &id)
				   : 0;
	int err = 0;

	if (version)
		err = kvcd_basis_get(d, ns, version, &basis);
	if (!err)
		err = kvcd_codec_decode_with(kvcd_isa_best(), b->data, b->stored,
					     basis ? basis->data : NULL, basis ? basis->stored : 0,
					     dst, cap, l);
	if (basis)
		kvcd_store_put(&d->store, basis, false);
	if (err == -ENOKEY) {
		kvcd_store_delete(&d->store, ns, key);
		err = -ENOENT;
	}
	return err;
}

static char *region(struct kvcd_session *s, const struct kvcp_sqe *v, size_t *size)
{
	if (v->flags & KVCP_SQE_F_SCRATCH) {
		*size = s->scratch_size;
		return s->scratch;
	}
	*size = s->staging_size;
	return s->staging;
}

/* Store @src under @pol as a new block: the codec plans its size, the store reserves it, the
 * codec (or, for raw blocks, the checksumming copy) fills it, and the block is published.
 * Returns 0 or -errno; nothing is left behind on failure. */
static int store_as(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		    const struct kvcd_policy *pol, const char *src, const float *scores,
		    const struct kvcd_aux *aux, const struct kvcp_key *parent)
{
	enum kvcd_isa isa = kvcd_isa_best();
	bool sum_on = __atomic_load_n(&d->cfg.checksum,
				      __ATOMIC_RELAXED); /* SIGHUP may change it */
	struct kvcd_plan plan;
	struct kvcp_layout l;
	struct kvcd_block *b;
	uint64_t sum = 0;
	int err;

	err = kvcd_codec_plan(isa, pol, &v->layout, v->arg, src, scores, aux, &plan);
	if (err)
		goto out;
	l = plan.layout;
	l.codec = plan.codec;
	err = kvcd_store_reserve(&d->store, s->ns_id, &v->key, &l, plan.bytes, s->order, s->norder,
				 &b);
	if (err)
		goto out;
	if (parent)
		kvcd_store_link(&d->store, s->ns_id, b, parent);
	b->stored = plan.stored;
	if (plan.raw) {
		sum = copy_sum(b->data, src, plan.stored, sum_on);
	} else {
		err = kvcd_codec_write(isa, &plan, src, scores, aux, b->data);
		if (!err && sum_on)
			sum = kvcd_copy_sum(isa, NULL, b->data, plan.stored);
	}
	if (!err && plan.summary_at) {
		err = kvcd_codec_summary(isa, &plan, src, b->data);
		b->summary = !err;
	}
	if (!err && d->remote && d->store.ns[s->ns_id].remote == KVCD_REMOTE_ALL)
		kvcd_remote_put(d, s->ns, &v->key, &l, b->data, plan.stored); /* write-through */
	kvcd_store_commit(&d->store, b, !err, sum_on, sum);
out:
	kvcd_plan_fini(&plan);
	return err;
}

/* The policy a request's layout.codec names: 0 the namespace's, 1..8 one this session
 * registered. Returns 0 or -EINVAL. */
static int policy_of(struct kvcd *d, const struct kvcd_session *s, uint8_t codec,
		     struct kvcd_policy *pol)
{
	if (!codec)
		kvcd_store_policy(&d->store, s->ns_id, pol);
	else if (codec <= s->npol)
		*pol = s->pol[codec - 1];
	else
		return -EINVAL;
	return 0;
}

/* The auxiliary section of a STORE at @buf[@off, @off + @len) (up to @slack bytes of padding
 * after it): header checked against the block's layout, arrays copied (read once) and checked
 * finite. *@mem is the copy. */
static int read_aux(const char *buf, uint64_t off, uint64_t len, uint64_t slack,
		    const struct kvcp_layout *l, struct kvcd_aux *a, float **mem)
{
	struct kvcp_aux h;
	uint64_t n;
	float *f;

	if (len < sizeof(h) || off % 4)
		return -EINVAL;
	memcpy(&h, buf + off, sizeof(h));
	n = kvcp_aux_bytes(&h, l);
	if (!n || len < sizeof(h) + n || len - (sizeof(h) + n) > slack)
		return -EINVAL;
	f = malloc(n);
	if (!f)
		return -ENOMEM;
	memcpy(f, buf + off + sizeof(h), n);
	for (uint64_t i = 0; i < n / 4; i++)
		if (!isfinite(f[i])) {
			free(f);
			return -EINVAL;
		}
	memset(a, 0, sizeof(*a));
	a->what = h.what;
	a->q_heads = h.q_heads;
	a->window = h.window;
	a->q_pos = h.q_pos;
	if (h.what & KVCP_AUX_ATTN) {
		a->attn = f;
		f += (size_t)l->layers * l->kv_heads * l->tokens;
	}
	if (h.what & KVCP_AUX_QUERIES) {
		a->q = f;
		a->lse = f + (size_t)l->layers * h.q_heads * h.window * l->head_dim;
	}
	*mem = a->attn ? (float *)a->attn : (float *)a->q;
	return 0;
}

/* store_as, falling back to raw (counted) when the namespace's policy cannot encode the block;
 * a policy the session registered gives its error back instead. */
static int store_with_fallback(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
			       const struct kvcd_policy *pol, const char *src, const float *scores,
			       const struct kvcd_aux *aux, const struct kvcp_key *parent)
{
	struct kvcd_block *basis = NULL;
	struct kvcd_aux with = { 0 };
	int err = 0;

	if (kvcd_policy_learned(pol)) { /* the namespace's newest basis, held while it is used */
		err = kvcd_basis_get(d, s->ns_id, 0, &basis);
		if (aux)
			with = *aux;
		with.basis = basis ? basis->data : NULL;
		with.basis_len = basis ? basis->stored : 0;
		aux = &with;
	}
	if (!err)
		err = store_as(d, s, v, pol, src, scores, aux, parent);
	if (basis)
		kvcd_store_put(&d->store, basis, false);
	if ((err == -EINVAL || err == -ERANGE || err == -ENOKEY) && !v->layout.codec &&
	    (pol->kind != KVCD_CODEC_NONE || kvcd_policy_sel(pol))) {
		struct kvcd_policy raw = { .kind = KVCD_CODEC_NONE };

		kvcd_store_fallback(&d->store, s->ns_id);
		err = store_as(d, s, v, &raw, src, NULL, NULL, parent);
	}
	return err;
}

/* STORE: layout.codec 0 takes the namespace's policy, which falls back to raw (counted) when
 * it cannot encode this block; 1..8 take a policy this session registered, whose failures go
 * back to the client. */
static int do_store(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v, char *buf)
{
	uint64_t bytes = kvcp_layout_bytes(&v->layout);
	bool scored = v->flags & KVCP_SQE_F_SCORES, has_aux = v->flags & KVCP_SQE_F_AUX;
	uint64_t sbytes = scored ? 4ull * v->layout.tokens : 0, len = v->len;
	struct kvcp_key parent, *pp = NULL;
	struct kvcd_aux aux, *ap = NULL;
	struct kvcd_policy pol;
	float *scores = NULL, *auxmem = NULL;
	const char *src = buf + v->off;
	void *bounce = NULL;
	int err;

	if (v->flags & KVCP_SQE_F_PARENT) { /* the last 16 bytes, read once */
		if (len < sizeof(parent) + bytes || (v->off + len - sizeof(parent)) % 8)
			return -EINVAL;
		len -= sizeof(parent);
		memcpy(&parent, buf + v->off + len, sizeof(parent));
		pp = &parent;
		/* the block, its scores and aux, then up to 7 bytes of padding */
		if (!has_aux && len > bytes + sbytes && len - (bytes + sbytes) < 8)
			len = bytes + sbytes;
	}
	if (!bytes || (!has_aux && len != bytes + sbytes) || (has_aux && len <= bytes + sbytes) ||
	    (scored && (v->off + bytes) % 4))
		return -EINVAL;
	if (policy_of(d, s, v->layout.codec, &pol))
		return -EINVAL;
	if (has_aux) {
		err = read_aux(buf, v->off + bytes + sbytes, len - bytes - sbytes, pp ? 7 : 0,
			       &v->layout, &aux, &auxmem);
		if (err)
			return err;
		ap = &aux;
	}
	if (scored && pol.hibits && pol.kind != KVCD_CODEC_NONE) {
		scores = malloc(4ull * v->layout.tokens);
		if (!scores) {
			err = -ENOMEM;
			goto out;
		}
		memcpy(scores, buf + v->off + bytes, 4ull * v->layout.tokens); /* read once */
	}
	if (misaligned(src)) {
		bounce = aligned_alloc(CODEC_ALIGN,
				       (bytes + CODEC_ALIGN - 1) & ~(CODEC_ALIGN - 1ull));
		if (!bounce) {
			err = -ENOMEM;
			goto out;
		}
		src = memcpy(bounce, src, bytes); /* read once, like the rest */
	}
	err = store_with_fallback(d, s, v, &pol, src, scores, ap, pp);
out:
	free(bounce);
	free(scores);
	free(auxmem);
	return err;
}

/* The block FETCH @v names, referenced, and the bytes FETCH writes for it (*@raw: the raw
 * block, its sparse form, or 0 when its header does not check out) with its layout in the
 * completion. Returns 0, -ENOENT, or -ENOSPC (@v's range is too small; no reference kept). */
static int fetch_begin(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		       struct kvcp_cqe *cqe, struct kvcd_block **b, uint64_t *raw)
{
	int err = kvcd_store_get(&d->store, s->ns_id, &v->key, b);

	if (err)
		return err;
	*raw = (*b)->layout.codec & KVCP_CODEC_SPARSE
		       ? kvcd_codec_out_size((*b)->data, (*b)->stored)
		       : kvcp_layout_bytes(&(*b)->layout);
	cqe->value = *raw;
	cqe->layout = (*b)->layout;
	if (*raw > v->len) {
		kvcd_store_put(&d->store, *b, false);
		return -ENOSPC;
	}
	return 0;
}

static int do_fetch(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v, char *buf,
		    struct kvcp_cqe *cqe)
{
	struct kvcd_block *b;
	struct kvcp_layout l;
	uint64_t raw;
	bool sum, bad = false;
	int err;

	err = fetch_begin(d, s, v, cqe, &b, &raw);
	if (err)
		return err;
	sum = b->has_sum;
	if (!raw) { /* a header that does not check out */
		bad = true;
	} else if (b->layout.codec == KVCD_CODEC_NONE) {
		if (copy_sum(buf + v->off, b->data, b->stored, sum) != b->checksum && sum)
			bad = true;
	} else if (sum && kvcd_copy_sum(kvcd_isa_best(), NULL, b->data, b->stored) != b->checksum) {
		bad = true;
	} else {
		char *dst = buf + v->off;
		void *bounce = misaligned(dst)
				       ? aligned_alloc(CODEC_ALIGN, (raw + CODEC_ALIGN - 1) &
									    ~(CODEC_ALIGN - 1ull))
				       : NULL;

		if (misaligned(dst) && !bounce) {
			kvcd_store_put(&d->store, b, false);
			return -ENOMEM;
		}
		err = decode_block(d, s->ns_id, &v->key, b, bounce ? bounce : dst,
				   bounce ? raw : v->len, &l);
		if (bounce && !err)
			memcpy(dst, bounce, raw);
		free(bounce);
		bad = err == -EBADMSG;
		if (err && !bad) {
			kvcd_store_put(&d->store, b, false);
			return err;
		}
	}
	kvcd_store_put(&d->store, b, bad);
	return bad ? -EIO : 0;
}

/* ---- STORE and FETCH of GPU staging ------------------------------------------------------------
 * The bytes are in the session's GPU staging (KVCP_SQE_F_GPU), which only a GPU copy can reach:
 * the worker prepares the host side (a reserved pool block, or a bounce buffer), hands the copy
 * to the device's mover (gpu.c) and serves its other sessions; the mover's completion wakes it,
 * and kvcd_resume() finishes the request here. Blocks the GPU codec kernels take are encoded or
 * decoded on the GPU, so only the encoded bytes cross PCIe; raw blocks are a plain copy; every
 * other policy goes through a bounce buffer and the CPU codec. */

enum {
	GPU_STORE_DIRECT = 1, /* staging -> the reserved pool block (raw, or encoded on the GPU) */
	GPU_STORE_BOUNCE,     /* staging -> a bounce buffer, then stored as a host STORE is */
	GPU_FETCH	      /* a pool block or a bounce buffer -> staging */
};

static bool gpu_codecs(const struct kvcd *d, unsigned dev)
{
	return d->gdev && kvcd_gpu_has_codecs(d, dev);
}

/* A copy of block @b in the job's device's GPU pool, to be filled by the job, when the device
 * has a pool with room. */
static void pool_fill(struct kvcd *d, struct kvcd_gpu_job *j, struct kvcd_block *b)
{
	struct kvcd_gpool *gp = kvcd_gpu_pool(d, j->dev);

	if (!gp)
		return;
	j->pent = kvcd_gpool_fill(gp, kvcd_store_rec(b), b->stored);
	j->pool = j->pent ? kvcd_gpu_pool_at(d, j->dev, j->pent->off) : 0;
}

/* The job is done with its GPU pool copy: a filled one is published when @ok, a read one let
 * go. */
static void pool_done(struct kvcd *d, struct kvcd_gpu_job *j, bool ok)
{
	struct kvcd_gpool *gp = kvcd_gpu_pool(d, j->dev);

	if (!j->pent)
		return;
	if (j->hit)
		kvcd_gpool_put(gp, j->pent);
	else
		kvcd_gpool_filled(gp, j->pent, ok);
	j->pent = NULL;
	j->pool = 0;
}

/* Stage the STORE's bytes into a bounce buffer first. */
static int gpu_store_bounce(struct kvcd *d, struct kvcd_gpu_job *j, uint64_t bytes)
{
	j->bounce = aligned_alloc(64, (bytes + 63) & ~63ull);
	if (!j->bounce)
		return -ENOMEM;
	j->stage = GPU_STORE_BOUNCE;
	j->op = KVCD_GPU_D2H;
	j->host = j->bounce;
	j->hlen = bytes;
	return kvcd_gpu_submit(d, j);
}

static int gpu_store(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		     struct kvcd_gpu_job *j)
{
	uint64_t bytes = kvcp_layout_bytes(&v->layout), len = v->len;
	struct kvcp_layout l;
	struct kvcd_block *b;
	int err;

	if (v->flags & KVCP_SQE_F_PARENT) { /* the last 16 bytes, 8-aligned, after padding */
		if (len < sizeof(j->parent) + bytes || (v->off + len - sizeof(j->parent)) % 8 ||
		    len - sizeof(j->parent) - bytes >= 8)
			return -EINVAL;
		j->has_parent = true;
		j->parent_off = len - sizeof(j->parent);
		len = bytes;
	}
	if (!bytes || len != bytes)
		return -EINVAL;
	if (policy_of(d, s, v->layout.codec, &j->pol))
		return -EINVAL;
	j->glen = bytes;
	/* selection reads the block to plan it: the CPU's, from a bounce buffer */
	if (kvcd_policy_sel(&j->pol))
		return gpu_store_bounce(d, j, bytes);
	err = kvcd_codec_plan(kvcd_isa_best(), &j->pol, &v->layout, v->arg, NULL, NULL, NULL,
			      &j->plan);
	if (err) {
		kvcd_plan_fini(&j->plan);
		return v->layout.codec ? err : gpu_store_bounce(d, j, bytes);
	}
	if (!j->plan.raw && (kvcd_codec_gpu_plan(&j->plan, &j->cj) || !gpu_codecs(d, j->dev))) {
		kvcd_plan_fini(&j->plan);
		return gpu_store_bounce(d, j, bytes);
	}
	l = j->plan.layout;
	l.codec = j->plan.codec;
	err = kvcd_store_reserve(&d->store, s->ns_id, &v->key, &l, j->plan.bytes, s->order,
				 s->norder, &b);
	if (err)
		return err;
	b->stored = j->plan.stored;
	j->blk = b;
	j->stage = GPU_STORE_DIRECT;
	j->host = b->data;
	j->hlen = j->plan.stored;
	if (j->plan.raw) {
		j->op = KVCD_GPU_D2H;
	} else {
		kvcd_codec_gpu_header(&j->plan, b->data);
		j->op = KVCD_GPU_ENCODE_D2H;
	}
	/* the block's bytes stay in the GPU pool too, as the mover writes them */
	if (j->plan.raw || j->cj.bytes <= j->plan.stored)
		pool_fill(d, j, b);
	err = kvcd_gpu_submit(d, j);
	if (err) {
		pool_done(d, j, false);
		kvcd_store_commit(&d->store, b, false, false, 0);
		j->blk = NULL;
	}
	return err;
}

/* The mover is done with a STORE: publish the block, or go on through the bounce buffer.
 * Returns the request's result, or -EINPROGRESS when the job went back to the mover. */
static int gpu_store_done(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
			  struct kvcd_gpu_job *j)
{
	enum kvcd_isa isa = kvcd_isa_best();
	bool sum_on = __atomic_load_n(&d->cfg.checksum, __ATOMIC_RELAXED);
	struct kvcd_block *b = j->blk;
	uint64_t sum = 0;
	int err = j->res;

	if (j->stage == GPU_STORE_BOUNCE)
		return err ? err
			   : store_with_fallback(d, s, v, &j->pol, j->bounce, NULL, NULL,
						 j->has_parent ? &j->parent : NULL);
	j->blk = NULL;
	if ((err == -EINVAL || err == -ERANGE) && !v->layout.codec) {
		/* the namespace's policy cannot encode these values: the CPU codec decides, and
		 * falls back to raw as for any STORE */
		pool_done(d, j, false);
		kvcd_store_commit(&d->store, b, false, false, 0);
		kvcd_plan_fini(&j->plan);
		memset(&j->plan, 0, sizeof(j->plan));
		err = gpu_store_bounce(d, j, j->glen);
		return err ? err : -EINPROGRESS;
	}
	if (!err && sum_on)
		sum = kvcd_copy_sum(isa, NULL, b->data, b->stored);
	if (!err && j->plan.summary_at) { /* raw blocks only: the pool's copy is the block */
		err = kvcd_codec_summary(isa, &j->plan, b->data, b->data);
		b->summary = !err;
	}
	if (!err && d->remote && d->store.ns[s->ns_id].remote == KVCD_REMOTE_ALL)
		kvcd_remote_put(d, s->ns, &v->key, &b->layout, b->data, b->stored);
	if (!err && j->has_parent)
		kvcd_store_link(&d->store, s->ns_id, b, &j->parent);
	kvcd_store_commit(&d->store, b, !err, sum_on, sum);
	pool_done(d, j, !err); /* a block dropped took its copy with it already */
	return err;
}

static int gpu_fetch(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		     struct kvcd_gpu_job *j, struct kvcp_cqe *cqe)
{
	struct kvcd_block *b;
	struct kvcp_layout l;
	uint64_t raw;
	int err;

	err = fetch_begin(d, s, v, cqe, &b, &raw);
	if (err)
		return err;
	if (!raw) { /* a header that does not check out */
		kvcd_store_put(&d->store, b, true);
		return -EIO;
	}
	j->stage = GPU_FETCH;
	j->blk = b;
	j->value = raw;
	j->layout = b->layout;
	j->glen = raw;
	j->op = KVCD_GPU_H2D;
	j->host = b->data;
	j->hlen = raw;
	if (b->layout.codec == KVCD_CODEC_NONE ||
	    (!kvcd_codec_gpu_read(b->data, b->stored, &j->cj) && gpu_codecs(d, j->dev))) {
		struct kvcd_gpool *gp = kvcd_gpu_pool(d, j->dev);
		bool plain = b->layout.codec == KVCD_CODEC_NONE;

		if (!plain) {
			j->op = KVCD_GPU_H2D_DECODE;
			j->hlen = b->stored;
		}
		/* a copy in the GPU pool is read there, checked when it was made; a FETCH that
		 * misses leaves one on its way */
		j->pent = gp ? kvcd_gpool_get(gp, kvcd_store_rec(b)) : NULL;
		if (j->pent) {
			j->hit = true;
			j->pool = kvcd_gpu_pool_at(d, j->dev, j->pent->off);
			j->op = plain ? KVCD_GPU_POOL_COPY : KVCD_GPU_POOL_DECODE;
		} else if (j->hlen <= b->stored) {
			pool_fill(d, j, b);
		}
	} else {
		/* the CPU decodes: the pool's bytes are summed first, as a host FETCH does */
		if (b->has_sum &&
		    kvcd_copy_sum(kvcd_isa_best(), NULL, b->data, b->stored) != b->checksum) {
			kvcd_store_put(&d->store, b, true);
			j->blk = NULL;
			return -EIO;
		}
		j->bounce = aligned_alloc(64, (raw + 63) & ~63ull);
		err = j->bounce ? decode_block(d, s->ns_id, &v->key, b, j->bounce, raw, &l)
				: -ENOMEM;
		if (err) {
			kvcd_store_put(&d->store, b, err == -EBADMSG);
			j->blk = NULL;
			return err == -EBADMSG ? -EIO : err;
		}
		j->host = j->bounce;
	}
	err = kvcd_gpu_submit(d, j);
	if (err) {
		pool_done(d, j, false);
		kvcd_store_put(&d->store, b, false);
		j->blk = NULL;
		return err;
	}
	/* the pool's bytes are summed while the device copies them (the block is referenced:
	 * they cannot change); a mismatch makes the FETCH fail when the copy is done */
	if (!j->bounce && !j->hit && b->has_sum &&
	    kvcd_copy_sum(kvcd_isa_best(), NULL, b->data, b->stored) != b->checksum)
		j->corrupt = true;
	return 0;
}

static void gpu_job_free(struct kvcd_gpu_job *j)
{
	kvcd_plan_fini(&j->plan);
	free(j->bounce);
	free(j);
}

/* KVCP_SQE_F_GPU: a STORE or FETCH of GPU staging, begun here and finished in kvcd_resume(). */
static int do_gpu(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		  struct kvcp_cqe *cqe)
{
	struct kvcd_gpu_job *j = calloc(1, sizeof(*j));
	int err;

	if (!j)
		return -ENOMEM;
	j->dev = v->gpu;
	j->gptr = s->gpu[v->gpu].ptr + v->off;
	j->wake = &d->workers[s->worker].wake;
	err = v->opcode == KVCP_OP_STORE ? gpu_store(d, s, v, j) : gpu_fetch(d, s, v, j, cqe);
	if (err) {
		gpu_job_free(j);
		return err;
	}
	s->cont.sqe = *v;
	s->cont.kind = KVCD_CONT_GPU;
	s->cont.gjob = j;
	return -EINPROGRESS;
}

/* The mover is done with s->cont.gjob: the request's result (-EINPROGRESS: not yet). */
static int gpu_done(struct kvcd *d, struct kvcd_session *s, struct kvcp_cqe *cqe)
{
	struct kvcd_gpu_job *j = s->cont.gjob;
	int res;

	if (j->stage == GPU_FETCH) {
		pool_done(d, j, !j->res && !j->corrupt);
		kvcd_store_put(&d->store, j->blk, j->corrupt);
		j->blk = NULL;
		cqe->value = j->value;
		cqe->layout = j->layout;
		res = j->corrupt ? -EIO : j->res;
	} else {
		res = gpu_store_done(d, s, &s->cont.sqe, j);
		if (res == -EINPROGRESS)
			return res;
	}
	kvcd_gpu_count_request(d, j->dev, j->stage != GPU_FETCH, j->bounce != NULL);
	gpu_job_free(j);
	s->cont.gjob = NULL;
	return res;
}

void kvcd_cont_abandon(struct kvcd *d, struct kvcd_session *s)
{
	struct kvcd_gpu_job *j = s->cont.gjob;
	uint64_t t0 = kvcd_now_ns();
	bool said = false;

	if (!j)
		return;
	while (!__atomic_load_n(&j->done, __ATOMIC_ACQUIRE)) {
		if (!said && kvcd_now_ns() - t0 > 5000000000ull) {
			kvcd_log(LOG_ERR, "client %u: a GPU copy has not finished in 5 s; waiting",
				 s->id);
			said = true;
		}
		usleep(1000);
	}
	pool_done(d, j, false);
	if (j->blk && j->stage == GPU_FETCH)
		kvcd_store_put(&d->store, j->blk, j->corrupt);
	else if (j->blk)
		kvcd_store_commit(&d->store, j->blk, false, false, 0);
	gpu_job_free(j);
	s->cont.gjob = NULL;
	s->cont.active = false;
}

/* POLICY: parse the string at off (read once); register it in a session slot, or set the
 * namespace's policy (admin). On -EINVAL the reason goes back at off. */
static int do_policy(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v, char *buf,
		     size_t size, struct kvcp_cqe *cqe)
{
	char str[KVCP_POLICY_MAX], why[128] = "";
	struct kvcd_policy p;
	int err = 0;

	if (!v->len || v->len >= sizeof(str) || v->arg > KVCP_POLICY_NS) {
		snprintf(why, sizeof(why), "policy string of 1..%d bytes, arg 0 or %u",
			 KVCP_POLICY_MAX - 1, KVCP_POLICY_NS);
		err = -EINVAL;
	} else {
		memcpy(str, buf + v->off, v->len);
		str[v->len] = '\0';
		if (strlen(str) != v->len) {
			snprintf(why, sizeof(why), "NUL inside the policy string");
			err = -EINVAL;
		} else {
			err = kvcd_policy_parse(str, &p, why, sizeof(why));
		}
	}
	if (err) {
		size_t n = strlen(why) + 1, room = size - v->off;

		n = n < room ? n : room;
		memcpy(buf + v->off, why, n);
		cqe->value = n;
		return err;
	}
	if (v->arg == KVCP_POLICY_NS) {
		if (!s->admin)
			return -EPERM;
		kvcd_store_set_policy(&d->store, s->ns_id, &p);
		return 0;
	}
	for (unsigned i = 0; i < s->npol; i++)
		if (!memcmp(&s->pol[i], &p, sizeof(p)))
			return (int)i + 1;
	if (s->npol == KVCP_POLICY_SLOTS)
		return -ENOSPC;
	s->pol[s->npol++] = p;
	return (int)s->npol;
}

static int by_score(const void *a, const void *b)
{
	const struct kvcp_select_hit *x = a, *y = b;

	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* Where @b's SELECT summary is (b->summary says there is one). */
static const void *summary_of(const struct kvcd_block *b)
{
	return (const char *)b->data + KVCD_SUMMARY_AT(b->stored);
}

/* The best @k of @n hits (by_score order) to the front of @h, sorted; returns how many. A
 * min-heap of the k best so far: n log k, where sorting all of them was n log n. */
static uint32_t top_k(struct kvcp_select_hit *h, uint32_t n, uint32_t k)
{
	k = k < n ? k : n;
	for (uint32_t i = 0; i < n; i++) {
		struct kvcp_select_hit x = h[i];
		uint32_t j;

		if (i >= k) {
			if (by_score(&x, &h[0]) >= 0) /* not better than the worst kept */
				continue;
			j = 0; /* replace the root and sift down */
			for (;;) {
				uint32_t c = 2 * j + 1;

				if (c >= k)
					break;
				if (c + 1 < k && by_score(&h[c + 1], &h[c]) > 0)
					c++;
				if (by_score(&h[c], &x) <= 0)
					break;
				h[j] = h[c];
				j = c;
			}
			h[j] = x;
			continue;
		}
		for (j = i; j && by_score(&h[(j - 1) / 2], &x) < 0; j = (j - 1) / 2) /* sift up */
			h[j] = h[(j - 1) / 2];
		h[j] = x;
	}
	qsort(h, k, sizeof(*h), by_score);
	return k;
}

/* SELECT: score each candidate by its summary, answer the best k in place. */
static int do_select(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v, char *buf,
		     struct kvcp_cqe *cqe)
{
	enum {
		CHUNK = 1024
	}; /* references held at a time */
	enum {
		PF_HEAD = 20,
		PF_BODY = 8
	}; /* prefetch distances, in candidates (measured) */
	struct kvcd_block *blk[CHUNK];
	struct kvcp_select h;
	struct kvcp_select_hit *hits = NULL;
	const struct kvcp_key *keys;
	struct kvcd_query x;
	uint32_t found = 0;
	float *q = NULL;
	size_t qn;
	int res;

	if (v->len < sizeof(h) || v->off % 8)
		return -EINVAL;
	memcpy(&h, buf + v->off, sizeof(h)); /* read once */
	qn = (size_t)h.q_heads * h.head_dim;
	if (!h.nkeys || h.nkeys > KVCP_SELECT_MAX_KEYS || !h.k || h.k > h.nkeys || !qn ||
	    qn > KVCP_SELECT_MAX_QUERY || h.reserved0 || h.reserved[0] || h.reserved[1] ||
	    v->len != sizeof(h) + (uint64_t)h.nkeys * sizeof(*keys) + qn * 4)
		return -EINVAL;
	keys = (const struct kvcp_key *)(buf + v->off + sizeof(h));
	q = malloc(qn * 4);
	hits = malloc((size_t)h.nkeys * sizeof(*hits));
	if (!q || !hits) {
		res = -ENOMEM;
		goto out;
	}
	memcpy(q, keys + h.nkeys, qn * 4); /* read once */
	for (size_t i = 0; i < qn; i++) {
		if (!isfinite(q[i])) {
			res = -EINVAL;
			goto out;
		}
	}
	if (kvcd_query_init(&x, q, h.q_heads, h.head_dim)) {
		res = -ENOMEM;
		goto out;
	}
	for (uint32_t i0 = 0; i0 < h.nkeys; i0 += CHUNK) {
		uint32_t n = h.nkeys - i0 < CHUNK ? h.nkeys - i0 : CHUNK;

		kvcd_store_ref_many(&d->store, s->ns_id, keys + i0, n, blk);
		for (uint32_t i = 0; i < n; i++) {
			const struct kvcd_block *b = blk[i];

			/* DRAM-bound: ask for a summary's header well ahead, its layer once the
			 * header (which says how large it is) has arrived */
			if (i + PF_HEAD < n && blk[i + PF_HEAD] && blk[i + PF_HEAD]->summary)
				__builtin_prefetch(summary_of(blk[i + PF_HEAD]));
			if (i + PF_BODY < n && blk[i + PF_BODY] && blk[i + PF_BODY]->summary)
				kvcd_codec_score_prefetch(&blk[i + PF_BODY]->layout,
							  summary_of(blk[i + PF_BODY]), h.layer);
			if (!b || !b->summary || h.layer >= b->layout.layers ||
			    h.head_dim != b->layout.head_dim || h.q_heads % b->layout.kv_heads)
				continue;
			hits[found].index = i0 + i;
			hits[found++].score = kvcd_codec_score(kvcd_isa_best(), &b->layout,
							       summary_of(b), h.layer, &x);
		}
		kvcd_store_put_many(&d->store, blk, n);
	}
	found = top_k(hits, found, h.k);
	memcpy(buf + v->off, hits, (size_t)found * sizeof(*hits));
	cqe->value = (uint64_t)found * sizeof(*hits);
	kvcd_query_fini(&x);
	res = (int)found;
out:
	free(q);
	free(hits);
	return res;
}

/* ---- the remote tier ---------------------------------------------------------------------
 * A local miss (FETCH) and the chunks after the local prefix (LOOKUP) are asked of the
 * remote tier when the namespace spills there. The worker queues the get and serves other
 * rings (s->cont.rget); the remote thread wakes it when the values are in. */

static bool remote_on(const struct kvcd *d, const struct kvcd_session *s)
{
	return d->remote && d->store.ns[s->ns_id].remote != KVCD_REMOTE_OFF;
}

/* Queue a get of @keys[0..n) for @s; returns -EINPROGRESS, or -ENOMEM. */
static int remote_ask(struct kvcd *d, struct kvcd_session *s, const struct kvcp_key *keys,
		      unsigned n, uint8_t kind)
{
	struct kvcd_rget *g = calloc(1, sizeof(*g));

	if (!g)
		return -ENOMEM;
	g->store = &d->store;
	g->ns_id = s->ns_id;
	kvcd_store_ns_hold(&d->store, s->ns_id); /* the session may go before the get is done */
	memcpy(g->order, s->order, sizeof(g->order));
	g->norder = s->norder;
	g->ns_hash = kvcd_remote_ns_hash(s->ns);
	g->n = n < KVCD_RGET_MAX ? n : KVCD_RGET_MAX;
	memcpy(g->keys, keys, g->n * sizeof(*keys)); /* read once */
	g->wake = &d->workers[s->worker].wake;
	s->cont.kind = kind;
	s->cont.rget = g;
	kvcd_remote_get(d, g);
	return -EINPROGRESS;
}

/* Keys a LOOKUP looks up before its worker turns to other sessions' rings. */
#define LOOKUP_SLICE 4096u

/* One slice of the LOOKUP in s->cont. Returns the longest cached prefix once it is known,
 * or -EINPROGRESS while keys remain and every one so far is cached. */
static int lookup_slice(struct kvcd *d, struct kvcd_session *s)
{
	struct kvcd_cont *c = &s->cont;
	size_t size, n = c->sqe.len / sizeof(struct kvcp_key), m, hit;
	const struct kvcp_key *keys =
		(const struct kvcp_key *)(region(s, &c->sqe, &size) + c->sqe.off);

	m = n - c->done < LOOKUP_SLICE ? n - c->done : LOOKUP_SLICE;
	hit = kvcd_store_lookup(&d->store, s->ns_id, keys + c->done, m);
	c->done += hit;
	if (c->done < n && hit == m)
		return -EINPROGRESS;
	if (c->done < n && remote_on(d, s)) /* the rest of the chain may be in the cluster */
		return remote_ask(d, s, keys + c->done, (unsigned)(n - c->done),
				  KVCD_CONT_REMOTE_LOOKUP);
	return (int)c->done;
}

static int do_lookup(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v)
{
	if (v->len % sizeof(struct kvcp_key) || v->off % 8)
		return -EINVAL;
	if (v->len / sizeof(struct kvcp_key) >
	    __atomic_load_n(&d->cfg.max_lookup_keys, __ATOMIC_RELAXED))
		return -E2BIG;
	s->cont.sqe = *v;
	s->cont.done = 0;
	return lookup_slice(d, s);
}

static int do_admin(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v, char *buf,
		    struct kvcp_cqe *cqe)
{
	unsigned n;

	switch (v->opcode) {
	case KVCP_OP_STATS: {
		static __thread struct kvcp_stats st; /* 14 KiB: not on a worker's stack */
		size_t len = v->len < sizeof(st) ? v->len : sizeof(st);

		if (v->len < KVCP_STATS_SIZE_2_1) /* a 2.1 client asks for that much */
			return -ENOSPC;
		kvcd_stats(d, s, &st);
		memcpy(buf + v->off, &st, len);
		cqe->value = len;
		return 0;
	}
	case KVCP_OP_LIST:
		if (v->off % 8)
			return -EINVAL;
		/* a session lists its own namespace: nothing to hide from it */
		n = kvcd_store_list(&d->store, s->ns_id, v->arg,
				    (struct kvcp_list_ent *)(buf + v->off),
				    (unsigned)(v->len / sizeof(struct kvcp_list_ent)));
		cqe->value = n * sizeof(struct kvcp_list_ent);
		return (int)n;
	case KVCP_OP_CLIENTS:
		if (v->off % 8)
			return -EINVAL;
		n = kvcd_clients(d, s, (struct kvcp_client_ent *)(buf + v->off),
				 (unsigned)(v->len / sizeof(struct kvcp_client_ent)));
		cqe->value = n * sizeof(struct kvcp_client_ent);
		return (int)n;
	case KVCP_OP_EVICT:
		if (!s->admin)
			return -EPERM;
		return (int)kvcd_store_reclaim(&d->store,
					       v->arg ? (uint64_t)v->arg << 20 : UINT64_MAX);
	}
	return -EBADMSG;
}

/* The completion of a request: its result, and the session's count of bad ones. */
static void complete(struct kvcd_session *s, struct kvcp_cqe *cqe, int res)
{
	cqe->res = res;
	if (res == -EBADMSG || res == -EINVAL)
		__atomic_fetch_add(&s->bad_requests, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&s->requests, 1, __ATOMIC_RELAXED);
}

/* ---- RECOMPRESS -----------------------------------------------------------------------------
 * A chain of raw blocks rewritten under a policy once the engine's prefill is done; with token
 * selection, chosen over the whole chain (kvcd_codec_chain_select). The worker encodes as it
 * does for a STORE, from the pool's bytes, which no client can change; each block is swapped
 * for its new form only while nobody else reads it (kvcd_store_rewrite_*). */

/* Rewrite block @b (raw, its checksum checked) under @pol from position @pos, with @aux (its
 * share of the chain's selection) or NULL. Counts what happened in d->recompress; true when
 * it was rewritten. */
static bool rewrite_one(struct kvcd *d, struct kvcd_session *s, const struct kvcd_policy *pol,
			struct kvcd_block *b, uint32_t pos, const struct kvcd_aux *aux,
			uint64_t *saved)
{
	enum kvcd_isa isa = kvcd_isa_best();
	bool sum_on = __atomic_load_n(&d->cfg.checksum, __ATOMIC_RELAXED);
	struct kvcp_layout l = b->layout;
	struct kvcd_rewrite rw;
	struct kvcd_plan plan;
	uint64_t sum = 0, before = b->stored;
	bool summary = false;
	int err;

	l.codec = 0;
	err = kvcd_codec_plan(isa, pol, &l, pos, b->data, NULL, aux, &plan);
	if (!err && (plan.raw || plan.bytes >= before))
		err = -ERANGE; /* nothing to gain: it stays as it is */
	if (!err)
		err = kvcd_store_rewrite_begin(&d->store, b, plan.bytes, plan.codec, s->order,
					       s->norder, &rw);
	if (err) {
		__atomic_fetch_add(err == -EBUSY ? &d->recompress.busy : &d->recompress.kept, 1,
				   __ATOMIC_RELAXED);
		kvcd_plan_fini(&plan);
		return false;
	}
	err = kvcd_codec_write(isa, &plan, b->data, NULL, aux, rw.data);
	if (!err && plan.summary_at) {
		err = kvcd_codec_summary(isa, &plan, b->data, rw.data);
		summary = !err;
	}
	if (!err && sum_on)
		sum = kvcd_copy_sum(isa, NULL, rw.data, plan.stored);
	rw.stored = plan.stored;
	kvcd_plan_fini(&plan);
	err = kvcd_store_rewrite_end(&d->store, b, &rw, !err, sum_on, sum, summary);
	if (!err) {
		__atomic_fetch_add(&d->recompress.blocks, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&d->recompress.bytes_before, before, __ATOMIC_RELAXED);
		__atomic_fetch_add(&d->recompress.bytes_after, rw.stored, __ATOMIC_RELAXED);
		*saved += before - rw.stored;
		return true;
	}
	__atomic_fetch_add(err == -EBUSY ? &d->recompress.busy : &d->recompress.kept, 1,
			   __ATOMIC_RELAXED);
	return false;
}

/* The blocks [@first, @end) of @b, raw and of one shape, rewritten under @pol; @aux (NULL:
 * none) is the chain's from block 0, whose first token is at @pos, its attention array
 * @chain_tokens long. Returns the blocks rewritten, or -errno (none was). */
static int rewrite_chain(struct kvcd *d, struct kvcd_session *s, const struct kvcd_policy *pol,
			 struct kvcd_block **b, uint32_t first, uint32_t end, uint32_t pos,
			 const struct kvcd_aux *aux, uint64_t chain_tokens, uint64_t *saved)
{
	uint32_t n = end - first, lh = b[first]->layout.layers * b[first]->layout.kv_heads;
	uint64_t off0 = 0, off = 0, kb = 0, rt = 0; /* rt: the run's tokens */
	int done = 0;
	struct kvcp_layout *ls = calloc(n, sizeof(*ls));
	const void **src = calloc(n, sizeof(*src));
	uint8_t **keep = calloc(n, sizeof(*keep)), *kmem = NULL;
	float *attn = NULL;
	int err = ls && src && keep ? 0 : -ENOMEM;

	for (uint32_t i = 0; i < first; i++)
		off0 += b[i]->layout.tokens;
	for (uint32_t i = 0; !err && i < n; i++) {
		ls[i] = b[first + i]->layout;
		ls[i].codec = 0;
		src[i] = b[first + i]->data;
		kb += kvcd_codec_keep_bytes(&ls[i]);
		rt += ls[i].tokens;
	}
	if (!err && pol->select) { /* the run's tokens, chosen together */
		struct kvcd_aux run = *aux;

		kmem = malloc(kb);
		attn = aux->attn ? malloc(rt * lh * 4) : NULL;
		err = kmem && (attn || !aux->attn) ? 0 : -ENOMEM;
		for (uint32_t i = 0, k = 0; !err && i < n; i++) {
			keep[i] = kmem + k;
			k += (uint32_t)kvcd_codec_keep_bytes(&ls[i]);
		}
		run.q_pos = (int32_t)(aux->q_pos - (int64_t)off0);
		for (uint32_t u = 0; !err && attn && u < lh; u++) /* [layer][head][the run's] */
			memcpy(attn + u * rt, aux->attn + u * chain_tokens + off0, rt * 4);
		run.attn = attn;
		if (!err)
			err = kvcd_codec_chain_select(kvcd_isa_best(), pol, n, ls, src,
						      pos + (uint32_t)off0, &run, keep);
	}
	for (uint32_t i = 0; !err && i < n; off += ls[i++].tokens) {
		struct kvcd_aux a = { .basis = aux->basis, .basis_len = aux->basis_len };
		float *blk = NULL;

		if (pol->select) {
			a = *aux;
			a.q_pos = (int32_t)(aux->q_pos - (int64_t)(off0 + off));
			a.keep = keep[i];
			a.attn = NULL; /* the chain's rows: only merging reads the block's */
			if (aux->attn && pol->merge) {
				blk = malloc((size_t)ls[i].tokens * lh * 4);
				if (!blk) {
					err = -ENOMEM;
					break;
				}
				for (uint32_t u = 0; u < lh; u++)
					memcpy(blk + (size_t)u * ls[i].tokens,
					       aux->attn + u * chain_tokens + off0 + off,
					       (size_t)ls[i].tokens * 4);
				a.attn = blk;
			}
		}
		done += rewrite_one(d, s, pol, b[first + i], pos + (uint32_t)(off0 + off), &a,
				    saved);
		free(blk);
	}
	free(attn);
	free(kmem);
	free(keep);
	free(src);
	free(ls);
	return err ? err : done;
}

/* The tokens RECOMPRESS's aux section of exactly @len bytes at @p counts for blocks shaped
 * like @l: its attention array's length says, when it has one (at least the @found tokens of
 * the blocks found, else 0); otherwise @found. */
static uint32_t aux_tokens(const char *p, uint64_t len, const struct kvcp_layout *l, uint64_t found)
{
	uint64_t lh = (uint64_t)l->layers * l->kv_heads, q = 0, t;
	struct kvcp_aux a;

	if (len < sizeof(a))
		return found <= UINT32_MAX ? (uint32_t)found : 0;
	memcpy(&a, p, sizeof(a));
	if (!(a.what & KVCP_AUX_ATTN) || !lh)
		return found <= UINT32_MAX ? (uint32_t)found : 0;
	if (a.what & KVCP_AUX_QUERIES)
		q = (uint64_t)l->layers * a.q_heads * a.window * ((uint64_t)l->head_dim + 1) * 4;
	if (len - sizeof(a) < q || (len - sizeof(a) - q) % (lh * 4))
		return 0;
	t = (len - sizeof(a) - q) / (lh * 4);
	return t >= found && t <= UINT32_MAX ? (uint32_t)t : 0;
}

static int do_recompress(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
			 const char *buf, struct kvcp_cqe *cqe)
{
	struct kvcp_recompress h;
	struct kvcp_key *keys = NULL;
	struct kvcd_block **b = NULL;
	struct kvcd_policy pol;
	struct kvcd_aux aux = { 0 };
	struct kvcd_block *basis = NULL;
	struct kvcp_layout cl;
	float *auxmem = NULL;
	char *auxcopy = NULL;
	uint64_t tokens = 0, saved = 0;
	uint32_t n, first = 0, end;
	int err = 0;

	if (v->len < sizeof(h))
		return -EINVAL;
	memcpy(&h, buf + v->off, sizeof(h)); /* read once, like the keys */
	if (h.magic != KVCP_RECOMPRESS_MAGIC || !h.nkeys || h.nkeys > KVCP_RECOMPRESS_MAX_KEYS ||
	    h.reserved0 || h.reserved[0] || h.reserved[1] ||
	    v->len != sizeof(h) + (uint64_t)h.nkeys * sizeof(*keys) ||
	    (h.aux_len && !kvcp_range_ok(h.aux_off, h.aux_len, s->staging_size)))
		return -EINVAL;
	if (policy_of(d, s, v->layout.codec, &pol))
		return -EINVAL;
	if (pol.kind == KVCD_CODEC_NONE && !kvcd_policy_sel(&pol))
		return -EINVAL; /* it keeps blocks raw */
	if (!h.aux_len && (pol.select == KVCD_SELECT_H2O || pol.select == KVCD_SELECT_SNAPKV))
		return -EINVAL; /* what it selects by is missing */
	n = h.nkeys;
	keys = malloc((size_t)n * sizeof(*keys));
	b = calloc(n, sizeof(*b));
	if (!keys || !b) {
		err = -ENOMEM;
		goto out;
	}
	memcpy(keys, buf + v->off + sizeof(h), (size_t)n * sizeof(*keys));
	kvcd_store_ref_many(&d->store, s->ns_id, keys, n, b);
	/* encoded blocks first (a shared prefix compressed before), then the raw ones */
	while (first < n && b[first] && b[first]->layout.codec)
		first++;
	for (end = first; end < n && b[end] && !b[end]->layout.codec; end++)
		if (b[end]->has_sum && kvcd_copy_sum(kvcd_isa_best(), NULL, b[end]->data,
						     b[end]->stored) != b[end]->checksum) {
			kvcd_store_put(&d->store, b[end],
				       true); /* corrupt: dropped, as FETCH does */
			b[end] = NULL;
			break;
		}
	for (uint32_t i = 0; i < end; i++) {
		const struct kvcp_layout *l = &b[i]->layout, *l0 = &b[0]->layout;

		if (l->dtype != l0->dtype || l->layers != l0->layers ||
		    l->kv_heads != l0->kv_heads || l->head_dim != l0->head_dim) {
			err = -EINVAL; /* one chain, one model */
			goto out;
		}
		tokens += l->tokens;
	}
	if (first == end)
		goto out; /* nothing raw: nothing to do */
	cl = b[0]->layout;
	cl.codec = 0;
	if (h.aux_len) { /* read once: its header says how long its arrays are */
		auxcopy = malloc(h.aux_len);
		if (!auxcopy) {
			err = -ENOMEM;
			goto out;
		}
		memcpy(auxcopy, s->staging + h.aux_off, h.aux_len);
	}
	cl.tokens = aux_tokens(auxcopy, h.aux_len, &cl, tokens);
	if (h.aux_len)
		err = cl.tokens ? read_aux(auxcopy, 0, h.aux_len, 0, &cl, &aux, &auxmem) : -EINVAL;
	if (!err &&
	    kvcd_policy_learned(&pol)) /* the namespace's newest basis, held while it is used */
		err = kvcd_basis_get(d, s->ns_id, 0, &basis);
	aux.basis = basis ? basis->data : NULL;
	aux.basis_len = basis ? basis->stored : 0;
	if (!err)
		err = rewrite_chain(d, s, &pol, b, first, end, h.pos, &aux, cl.tokens, &saved);
out:
	for (uint32_t i = 0; b && i < n; i++)
		if (b[i])
			kvcd_store_put(&d->store, b[i], false);
	if (basis)
		kvcd_store_put(&d->store, basis, false);
	free(auxmem);
	free(auxcopy);
	free(b);
	free(keys);
	cqe->value = saved;
	return err;
}

bool kvcd_execute(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *v,
		  struct kvcp_cqe *cqe)
{
	uint64_t ms;
	size_t size;
	char *buf = region(s, v, &size);
	int res;

	memset(cqe, 0, sizeof(*cqe));
	cqe->user_data = v->user_data;
	if (v->opcode >= KVCP_OP__COUNT || (v->flags & ~KVCP_SQE_F_KNOWN) ||
	    (v->gpu && !(v->flags & KVCP_SQE_F_GPU)) ||
	    ((v->flags & KVCP_SQE_F_SCORES) && v->opcode != KVCP_OP_STORE)) {
		res = -EBADMSG;
		goto out;
	}
	/* a namespace's learned bases are kvcd's (basis.c): no client stores, fetches, deletes
	 * or pins them, on the host or through GPU staging */
	if (kvcd_basis_key(&v->key) && (v->opcode == KVCP_OP_STORE || v->opcode == KVCP_OP_FETCH ||
					v->opcode == KVCP_OP_DELETE || v->opcode == KVCP_OP_PIN)) {
		res = -EPERM;
		goto out;
	}
	if (v->flags & KVCP_SQE_F_GPU) {
		if ((v->opcode != KVCP_OP_STORE && v->opcode != KVCP_OP_FETCH) ||
		    (v->flags != KVCP_SQE_F_GPU &&
		     (v->flags != (KVCP_SQE_F_GPU | KVCP_SQE_F_PARENT) ||
		      v->opcode != KVCP_OP_STORE))) {
			res = -EINVAL;
		} else if (v->gpu >= KVCD_MAX_GPUS || !(s->gpu_mask >> v->gpu & 1)) {
			res = -ENODEV; /* no GPU staging on that device */
		} else if (!kvcp_range_ok(v->off, v->len, s->gpu[v->gpu].size) ||
			   v->off % KVCP_GPU_ALIGN) {
			/* the kernels load and store elements aligned: a misaligned access
			 * would fault the device for every client */
			res = -EINVAL;
		} else {
			res = do_gpu(d, s, v, cqe);
			if (res == -ENOENT && v->opcode == KVCP_OP_FETCH && remote_on(d, s)) {
				s->cont.sqe = *v; /* the cluster first, then the GPU copy */
				res = remote_ask(d, s, &v->key, 1, KVCD_CONT_REMOTE_FETCH);
			}
			if (res == -EINPROGRESS) {
				s->cont.active = true;
				return false;
			}
		}
		goto out;
	}
	if (v->opcode != KVCP_OP_NOP && v->opcode != KVCP_OP_DELETE && v->opcode != KVCP_OP_PIN &&
	    v->opcode != KVCP_OP_UNPIN && v->opcode != KVCP_OP_EVICT &&
	    v->opcode != KVCP_OP_CALIBRATE && !kvcp_range_ok(v->off, v->len, size)) {
		res = -EINVAL;
		goto out;
	}
	switch (v->opcode) {
	case KVCP_OP_NOP: res = 0; break;
	case KVCP_OP_STORE: res = do_store(d, s, v, buf); break;
	case KVCP_OP_FETCH:
		res = do_fetch(d, s, v, buf, cqe);
		if (res == -ENOENT && remote_on(d, s)) {
			s->cont.sqe = *v;
			res = remote_ask(d, s, &v->key, 1, KVCD_CONT_REMOTE_FETCH);
		}
		break;
	case KVCP_OP_LOOKUP:
		s->cont.kind = KVCD_CONT_LOOKUP;
		res = do_lookup(d, s, v);
		break;
	case KVCP_OP_DELETE: res = kvcd_store_delete(&d->store, s->ns_id, &v->key); break;
	case KVCP_OP_PIN:
		ms = __atomic_load_n(&d->cfg.lease_max_ms,
				     __ATOMIC_RELAXED); /* SIGHUP may change it */
		ms = v->arg && v->arg < ms ? v->arg : ms;
		res = kvcd_store_pin(&d->store, s->ns_id, &v->key, &s->pins,
				     kvcd_now_ns() + ms * 1000000ull,
				     __atomic_load_n(&d->cfg.max_pins, __ATOMIC_RELAXED));
		break;
	case KVCP_OP_UNPIN: res = kvcd_store_unpin(&d->store, s->ns_id, &v->key, &s->pins); break;
	case KVCP_OP_POLICY: res = do_policy(d, s, v, buf, size, cqe); break;
	case KVCP_OP_SELECT: res = do_select(d, s, v, buf, cqe); break;
	case KVCP_OP_RECOMPRESS: res = do_recompress(d, s, v, buf, cqe); break;
	case KVCP_OP_CALIBRATE:
		res = v->len && (!kvcp_range_ok(v->off, v->len, size) || v->off % 4)
			      ? -EINVAL
			      : kvcd_calibrate(d, s, v->arg, buf + v->off, v->len, &s->cont.cjob);
		if (res == -EINPROGRESS) { /* learned on its own thread: the worker goes on */
			s->cont.sqe = *v;
			s->cont.kind = KVCD_CONT_CALIBRATE;
		}
		break;
	default: res = do_admin(d, s, v, buf, cqe); break;
	}
	if (res == -EINPROGRESS) {
		s->cont.active = true;
		return false;
	}
out:
	complete(s, cqe, res);
	return true;
}

bool kvcd_resume(struct kvcd *d, struct kvcd_session *s, struct kvcp_cqe *cqe)
{
	struct kvcd_cont *c = &s->cont;
	struct kvcd_rget *g = c->rget;
	uint64_t got = 0;
	size_t size;
	int res;

	memset(cqe, 0, sizeof(*cqe));
	cqe->user_data = c->sqe.user_data;
	if (c->kind == KVCD_CONT_LOOKUP) {
		res = lookup_slice(d, s);
		if (res == -EINPROGRESS)
			return false;
	} else if (c->kind == KVCD_CONT_CALIBRATE) {
		if (__atomic_load_n(&c->cjob->done, __ATOMIC_ACQUIRE) != 1)
			return false;
		res = c->cjob->res;
		cqe->value = res >= 0 ? c->cjob->bytes : 0;
		kvcd_cal_free(c->cjob);
		c->cjob = NULL;
	} else if (c->kind == KVCD_CONT_GPU) {
		if (!__atomic_load_n(&c->gjob->done, __ATOMIC_ACQUIRE))
			return false;
		res = gpu_done(d, s, cqe);
		if (res == -EINPROGRESS)
			return false;
	} else if (!g || __atomic_load_n(&g->done, __ATOMIC_ACQUIRE) != 1) {
		return false;
	} else if (c->kind == KVCD_CONT_REMOTE_LOOKUP) {
		/* the consecutive chunks the cluster had are in the pool: res counts the local
		 * ones, value those that came from the cluster */
		while (got < g->n && !g->err[got])
			got++;
		res = (int)c->done;
		cqe->value = got;
	} else {
		res = g->err[0]; /* rejected bytes are a miss, like none */
		if ((!res || res == -ENOENT || res == -EBADMSG) &&
		    (c->sqe.flags & KVCP_SQE_F_GPU)) {
			kvcd_rget_free(g); /* now the copy into GPU staging, at the mover */
			c->rget = g = NULL;
			res = do_gpu(d, s, &c->sqe, cqe);
			if (res == -EINPROGRESS)
				return false;
		} else if (!res || res == -ENOENT || res == -EBADMSG) {
			res = do_fetch(d, s, &c->sqe, region(s, &c->sqe, &size), cqe);
		}
	}
	if (g && c->kind != KVCD_CONT_LOOKUP) {
		kvcd_rget_free(g);
		c->rget = NULL;
	}
	c->active = false;
	complete(s, cqe, res);
	return true;
}
