/* kvc.h - libkvcclient, the public API of kvcd.
 *
 * An engine attaches once over kvcd's UNIX socket and then talks to the daemon through two
 * shared-memory rings: no syscall per request while the daemon is polling. Data moves through
 * a staging buffer that the daemon creates and both sides map: STORE reads it, FETCH writes it.
 *
 * Conventions: every action returns 0 (or a count) on success and -errno on failure;
 * kvc_strerror() decodes. A kvc_client is not thread-safe: use one per thread (like an
 * io_uring). It is not inherited across fork(). If this header does not say it, it is not API.
 */
#ifndef KVC_H
#define KVC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* KVC_VERSION_MAJOR, _MINOR, _PATCH and KVC_VERSION_STRING: the release this header belongs
 * to, written by the build from the Makefile's VERSION (the one place it is set). */
#include "kvc_version.h"

/* Library version as MAJOR << 16 | MINOR << 8 | PATCH (independent of the protocol). A program
 * built against an older release keeps working with a newer library: symbols are versioned
 * per release (KVC_0.1, KVC_0.3, ...), and calls that fill structs which may grow take the
 * caller's sizeof. */
unsigned kvc_version(void);

typedef struct kvc_client kvc_client;

/* A 128-bit chained prefix hash (see kvc_key_chain). */
struct kvc_key {
	uint64_t hi, lo;
};

enum kvc_dtype {
	KVC_F32 = 1,
	KVC_F16 = 2,
	KVC_BF16 = 3
};

/* One block: the K and V of @tokens tokens for every layer, memory order
 * [layer][K,V][token][head][dim], elements of @dtype. On STORE @codec picks the compression
 * policy: 0 = the namespace's, 1..8 = one registered with kvc_policy(). On FETCH @codec reports
 * how kvcd held the block (KVC_CODEC_*, with KVC_CODEC_SPARSE when tokens were selected); the
 * bytes written are always the engine's own dtype and layout. @reserved is 0. */
struct kvc_layout {
	uint8_t dtype;
	uint8_t codec;
	uint16_t layers;
	uint16_t kv_heads;
	uint16_t head_dim;
	uint32_t tokens;
	uint32_t reserved;
};

/* How kvcd held a fetched block (kvc_layout.codec on FETCH). */
enum kvc_codec {
	KVC_CODEC_NONE = 0, /* raw */
	KVC_CODEC_INT = 1,  /* int2..int8 groups */
	KVC_CODEC_FP8 = 2,  /* e4m3 */
	KVC_CODEC_KIVI = 3, /* K per channel, V per token */
};

/* Bytes of a block with layout @l, or 0 if @l is invalid. */
size_t kvc_layout_bytes(const struct kvc_layout *l);

/* ---- keys ---------------------------------------------------------------------------------
 * key(i) = XXH3-128 over (key(i-1), namespace, token ids of chunk i as little-endian int32),
 * with key(-1) = {0, 0}. Identical across processes and machines. */

/* Key of one chunk. @prev is the previous chunk's key or NULL for the first chunk. */
int kvc_key_chain(const struct kvc_key *prev, const char *ns, const int32_t *tokens, size_t ntokens,
		  struct kvc_key *out);

/* Keys of every full chunk of @chunk tokens in @tokens[0..ntokens): writes at most @max keys
 * to @out and returns how many (ntokens / chunk, capped by @max), or -EINVAL. */
int kvc_key_chain_all(const char *ns, const int32_t *tokens, size_t ntokens, size_t chunk,
		      struct kvc_key *out, size_t max);

/* ---- attach ------------------------------------------------------------------------------- */

#define KVC_ATTACH_BUSY_POLL 1u /* waiters spin and never sleep in the kernel */

struct kvc_attach_opts {
	const char *socket;  /* NULL: $KVCD_SOCKET, else kvcd's default path */
	const char *ns;	     /* namespace (model fingerprint); NULL: "default". Names of
			      * 64 bytes or more become their first 46 bytes, '~' and 16
			      * hex digits of their XXH64 (63 bytes: kvcd's limit) */
	size_t staging_size; /* 0: the daemon's default */
	int numa_node;	     /* -1: let kvcd place by the CPUs this thread runs on */
	unsigned flags;	     /* KVC_ATTACH_* */
	unsigned spin_us;    /* a wait that spins does so at most this long, then sleeps;
			      * whether waits spin or sleep at once is measured (the mean
			      * wait of each way, with short trials of the other), so a busy
			      * machine soon has them sleep; 0: 500 us */
	int op_timeout_ms;   /* a synchronous call gives up after this long (-ETIMEDOUT):
			      * 0: KVC_OP_TIMEOUT_MS_DEFAULT, < 0: never. Its request may
			      * still run later (kvcd stopped, not dead): its completion is
			      * then discarded, but its staging range may still be read or
			      * written until then. */
	/* 0.6: GPU staging (protocol 2.4). With @gpu set, kvcd gives this client GPU memory
	 * of its own on each device of @gpu_mask (bit i: kvcd's device i, as kvc_stats lists
	 * them; 0: every device kvcd serves), @gpu_staging_size bytes each (0: kvcd's
	 * default). The library then loads the CUDA driver; without @gpu it never does. */
	int gpu;
	size_t gpu_staging_size;
	uint64_t gpu_mask;
};
#define KVC_OP_TIMEOUT_MS_DEFAULT 5000

/* Fill @o with the defaults above. */
void kvc_attach_opts_init(struct kvc_attach_opts *o);

/* Connect to kvcd and map the rings and the staging buffer. On success *@out owns them until
 * kvc_detach(). Returns 0, -ENOENT/-ECONNREFUSED (no daemon), -EACCES (uid/gid not allowed
 * for this namespace), -EPROTO (incompatible daemon), -EUSERS (too many clients), -EBUSY (too
 * many attaches of this uid in progress: retry), -E2BIG (staging_size above kvcd's
 * staging_max, or gpu_staging_size above its [gpu] staging_max), -ENFILE (kvcd's namespace
 * table is full), -ENOMEM. With @gpu: -ENODEV when kvcd has no device that can share memory
 * (no driver, no GPU, or one outside the mask), or this process has no CUDA driver or sees
 * none of the devices (a device hidden by CUDA_VISIBLE_DEVICES is left out, the others
 * served); a kvcd older than protocol 2.4 refuses the attach (-EBADMSG).
 *
 * After kvcd restarts, the next call returns -ECONNRESET and the handle re-attaches on its
 * own; policies registered with kvc_policy() belong to the old session: register them
 * again. */
int kvc_attach(const struct kvc_attach_opts *o, kvc_client **out);

/* Release everything @c owns; requests in flight are abandoned. NULL is a no-op. */
void kvc_detach(kvc_client *c);

/* The staging buffer: valid from kvc_attach() to kvc_detach(), at the same address even after
 * a daemon restart (its contents are then lost). *@size receives its length. */
void *kvc_staging(kvc_client *c, size_t *size);

/* GPU staging on kvcd's device @index (a CUdeviceptr, usable in every context of this process
 * on that device): valid from kvc_attach() to kvc_detach(), at the same address after a
 * daemon restart. 0 when there is none; *@size (may be NULL) receives its length. Engines
 * write K/V there with their own kernels or copies and name it with KVC_REQ_GPU. */
uint64_t kvc_gpu_staging(kvc_client *c, unsigned index, size_t *size);
/* kvcd's index of this process's CUDA device @ordinal (the device CUDA_VISIBLE_DEVICES makes
 * ordinal @ordinal here), or -ENODEV when this client has no GPU staging on it. */
int kvc_gpu_index(kvc_client *c, int ordinal);

/* Socket path used when kvc_attach_opts.socket is NULL: $KVCD_SOCKET, else
 * /run/kvcd/kvcd.sock, $XDG_RUNTIME_DIR/kvcd.sock or /tmp/kvcd.sock, the first that exists. */
const char *kvc_default_socket(void);

/* ---- asynchronous requests ----------------------------------------------------------------
 * Fill requests, submit a batch with one doorbell, then reap completions with kvc_poll or
 * kvc_wait. Completions carry the ticket kvc_submit assigned. Ranges (@off, @len) address
 * the staging buffer. */

enum kvc_op {
	KVC_OP_NOP = 0,
	KVC_OP_STORE = 1,  /* @key, @layout, @off, @len = kvc_layout_bytes(@layout); @arg =
				 * position of the block's first token in its sequence (policies
				 * keep the sequence's first `sink` tokens exact; kvc_store and
				 * kvc_store_scored pass 0) */
	KVC_OP_FETCH = 2,  /* @key, @off, @len = capacity; cqe.value = bytes written */
	KVC_OP_LOOKUP = 3, /* @off: @len / 16 keys; cqe.res = longest cached prefix */
	KVC_OP_DELETE = 4, /* @key */
	KVC_OP_PIN = 5,	   /* @key, @arg = lease in ms (0: daemon maximum) */
	KVC_OP_UNPIN = 6,  /* @key */
};

#define KVC_REQ_SCORES \
	2u /* STORE: @layout->tokens f32 importance scores follow the block
				 * in staging; @len = kvc_layout_bytes(@layout) + 4 * tokens */
#define KVC_REQ_AUX \
	4u /* STORE: a struct kvc_aux and its arrays follow the block (and
				 * the scores, if any), 4-aligned; @len includes them */
#define KVC_REQ_PARENT \
	8u /* STORE: the last 16 bytes of @off..@off + @len are the block's
				 * parent (the struct kvc_key of the chunk before it in its
				 * chain), 8-aligned; @len includes them. kvcd evicts chains from
				 * their tails and drops blocks whose prefix is gone first. A kvcd
				 * older than protocol 2.3 gets the STORE without it */

#define KVC_REQ_GPU \
	16u /* STORE, FETCH: @off, @len address this client's GPU staging on
				 * device @gpu, not its staging buffer, @off a multiple of 16
				 * (-EINVAL otherwise); no other flag with it but
				 * KVC_REQ_PARENT on a STORE (kvc_req_parent).
				 * STORE's bytes go to the host pools, encoded on the GPU when
				 * the policy's codec runs there; FETCH decodes on the GPU */

/* What an engine hands over for token selection (policies with select=h2o or snapkv). After
 * this header, f32 arrays in this order, each present when its bit is in @what:
 *   KVC_AUX_ATTN     [layers][kv_heads][tokens]: attention each token of the block has
 *                    received, summed over its KV head's query heads and the later queries
 *   KVC_AUX_QUERIES  [layers][q_heads][window][head_dim]: post-RoPE queries of an observation
 *                    window, query i at block-relative position @q_pos + i (it sees the
 *                    block's tokens up to there); then [layers][q_heads][window]: each query's
 *                    log-sum-exp of q.k / sqrt(head_dim) over every key it attended */
#define KVC_AUX_MAGIC	0x5841564bu
#define KVC_AUX_ATTN	1u
#define KVC_AUX_QUERIES 2u

struct kvc_aux {
	uint32_t magic;	  /* KVC_AUX_MAGIC */
	uint32_t what;	  /* KVC_AUX_* */
	uint16_t q_heads; /* QUERIES: a multiple of kv_heads */
	uint16_t window;  /* QUERIES: 1..4096 */
	int32_t q_pos;
	uint64_t reserved[2]; /* 0 */
};

/* Bytes of the arrays that follow @a for blocks of layout @l (0: @a is invalid for it). */
uint64_t kvc_aux_bytes(const struct kvc_aux *a, const struct kvc_layout *l);

/* FETCH of a block whose policy dropped tokens sets KVC_CODEC_SPARSE in layout.codec and
 * writes a struct kvc_sparse, then uint32_t count[layers][kv_heads], uint32_t token[total]
 * (block-relative, ascending per (layer, head)), float bias[total] (add to the token's
 * attention logit: log of the tokens it stands for after merging, else 0), then per layer K
 * then V, per head count rows of head_dim in the block's dtype. Tokens not listed are dropped:
 * mask them out of attention. */
#define KVC_CODEC_SPARSE 0x80u
#define KVC_SPARSE_MAGIC 0x3153564bu

struct kvc_sparse {
	uint32_t magic;	 /* KVC_SPARSE_MAGIC */
	uint32_t total;	 /* kept tokens over every (layer, head) */
	uint32_t tokens; /* tokens of the block as stored */
	uint32_t reserved;
};

struct kvc_req {
	uint8_t op;
	uint8_t flags; /* KVC_REQ_* */
	uint16_t gpu;  /* KVC_REQ_GPU: kvcd's device index; else 0 */
	uint32_t arg;
	struct kvc_key key;
	struct kvc_layout layout;
	uint64_t off, len;
};

struct kvc_cqe {
	uint64_t ticket;
	int32_t res; /* >= 0 on success, else -errno */
	uint32_t reserved;
	uint64_t value;
	struct kvc_layout layout;
};

/* Queue @n requests and ring the doorbell once. Tickets go to @tickets (may be NULL).
 * Returns how many were queued (fewer than @n when the ring fills), or -errno. */
int kvc_submit(kvc_client *c, const struct kvc_req *reqs, unsigned n, uint64_t *tickets);

/* Reap up to @max completions without blocking. Returns the count. */
int kvc_poll(kvc_client *c, struct kvc_cqe *out, unsigned max);

/* Reap between @min and @max completions, waiting up to @timeout_ms (-1: forever).
 * Returns the count, -ETIMEDOUT, or -ECONNRESET when kvcd restarted: requests in flight
 * are lost, and @c is attached to the new daemon. */
int kvc_wait(kvc_client *c, struct kvc_cqe *out, unsigned min, unsigned max, int timeout_ms);

/* ---- synchronous requests (submit one, wait for it) --------------------------------------- */

int kvc_nop(kvc_client *c);

/* Store the @layout block at staging[@off, @off + kvc_layout_bytes(@layout)) under @key.
 * Returns 0, -EEXIST (already stored; kept as is), -ENOSPC (pool full of pinned blocks),
 * -EINVAL (bad layout or range). */
int kvc_store(kvc_client *c, const struct kvc_key *key, const struct kvc_layout *layout,
	      size_t off);

/* As kvc_store, with one f32 importance score per token (higher = more important) at
 * staging[@off + kvc_layout_bytes(@layout)], 4-byte aligned: policies with `hibits` spend more
 * bits on the important tokens (MiKV). */
int kvc_store_scored(kvc_client *c, const struct kvc_key *key, const struct kvc_layout *layout,
		     size_t off);
/* Name STORE request @r's @parent in its chain (the key of the chunk before it): writes it into
 * staging after what @r already covers (@off, @len: the block, its scores and aux), at the
 * next multiple of 8, and adds KVC_REQ_PARENT and those bytes to @r. A KVC_REQ_GPU request's
 * parent goes into its GPU staging (a copy to the device). Returns 0, -EINVAL when @r is not a
 * STORE, names a parent already or has no room in staging for it, -ENODEV (a GPU request
 * for a device this client has no GPU staging on), -EIO (the copy failed). */
int kvc_req_parent(kvc_client *c, struct kvc_req *r, const struct kvc_key *parent);

/* As kvc_store, naming the block's @parent in its chain (the key of the chunk before it;
 * NULL: a chain's first block), which kvcd's eviction uses to keep whole prefixes. Writes
 * the parent into staging after the block, at @off + kvc_layout_bytes(@layout) rounded up to
 * 8 (16 bytes there must be free). */
int kvc_store_chained(kvc_client *c, const struct kvc_key *key, const struct kvc_key *parent,
		      const struct kvc_layout *layout, size_t off);

/* Register compression policy @policy (e.g. "kivi:kbits=4,vbits=4,group=32,sink=4",
 * "int4:rotate=hadamard", "fp8", "none") for this client. Returns the id (1..8) to put in
 * kvc_layout.codec on STORE, or -EINVAL with the reason in @why (may be NULL), -ENOSPC when
 * all 8 slots hold other policies. With KVC_POLICY_NAMESPACE, sets the policy of the
 * client's namespace instead (daemon's uid or root; -EPERM otherwise) and returns 0: blocks
 * already stored keep the encoding they were written with. */
#define KVC_POLICY_NAMESPACE 1u
int kvc_policy(kvc_client *c, const char *policy, unsigned flags, char *why, size_t whylen);

/* Fetch block @key into staging[@off, @off + @cap). On success *@layout (may be NULL)
 * describes what was written; the bytes stay valid until the next request that names the same
 * staging range. Returns 0, -ENOENT (not cached), -ENOSPC (@cap too small), -EIO (checksum
 * mismatch: the block was dropped), -EINVAL. */
int kvc_fetch(kvc_client *c, const struct kvc_key *key, size_t off, size_t cap,
	      struct kvc_layout *layout);

/* kvc_store and kvc_fetch of GPU staging on kvcd's device @index (KVC_REQ_GPU): the same
 * results, and -ENODEV when this client has no GPU staging there. */
int kvc_store_gpu(kvc_client *c, unsigned index, const struct kvc_key *key,
		  const struct kvc_layout *layout, size_t off);
int kvc_fetch_gpu(kvc_client *c, unsigned index, const struct kvc_key *key, size_t off, size_t cap,
		  struct kvc_layout *layout);

/* SELECT (Quest): which of the candidate blocks @keys[0..n) matter most for the queries @q
 * ([q_heads][head_dim] f32, post-RoPE) at @layer. kvcd keeps the channel-wise min and max of
 * every stored block's keys per (layer, KV head) and scores a block by the largest upper bound
 * of q.k / sqrt(head_dim) over its keys and the query heads (query head h reads KV head
 * h / (q_heads / kv_heads)), so a block that holds the best key always scores at least its
 * q.k. Writes the best min(@k, candidates found) to @out, highest score first, and returns
 * their count. Candidates not stored, or whose layout does not fit the query, are skipped.
 * -EINVAL: n, k or the query out of range; -EMSGSIZE: the request exceeds the scratch area. */
struct kvc_select_hit {
	uint32_t index; /* into @keys */
	float score;
};

/* RECOMPRESS: once its prefill is done, an engine that stored the prompt in chunks raw has the
 * chain @keys[0..n) (consecutive chunks of one sequence, the first at position @pos) rewritten
 * under policy @codec (0: the namespace's, 1..8: one kvc_policy registered). With token
 * selection (select=) the chain's tokens are chosen as one block holding all of it would have
 * them chosen: one observation window, one budget over the chain, sinks at its start and the
 * window at its end. The selection's input is the aux section at staging[@aux_off], @aux_len
 * bytes exactly (0: none): a struct kvc_aux and its arrays, as after a STORE's block, for a
 * block of the chain's layout holding every token of the chain as the engine counts them
 * (kvcd takes the attention array's length from @aux_len, so a chain cut short by a missing
 * block still finds its tokens' rows); q_pos counts from the first block's first token. Only
 * raw blocks are rewritten; encoded ones at
 * the chain's start are left as they are, the chain ends at the first block missing; a block
 * another request is reading or has pinned stays raw. Returns the blocks rewritten and, in
 * *@saved (may be NULL), the pool bytes that freed; -EINVAL (a bad request, a policy that
 * keeps blocks raw, select= without the aux it needs, shapes that differ), -EMSGSIZE (more
 * keys than the scratch area holds or KVC_RECOMPRESS_MAX_KEYS). */
#define KVC_RECOMPRESS_MAX_KEYS 4096
int kvc_recompress(kvc_client *c, const struct kvc_key *keys, size_t n, uint32_t pos, uint8_t codec,
		   size_t aux_off, size_t aux_len, uint64_t *saved);

int kvc_select(kvc_client *c, const struct kvc_key *keys, size_t n, uint32_t layer, const float *q,
	       uint32_t q_heads, uint32_t head_dim, uint32_t k, struct kvc_select_hit *out);

/* Length of the longest prefix of @keys[0..n) that kvcd holds, in *@hits: in its pools, or
 * (when it has a remote tier) in the cluster, from where it brings them into its pools. */
int kvc_lookup(kvc_client *c, const struct kvc_key *keys, size_t n, size_t *hits);
/* The same, told apart: *@local leading blocks were in kvcd's pools, the *@remote after
 * them came from its remote tier. */
int kvc_lookup_tiers(kvc_client *c, const struct kvc_key *keys, size_t n, size_t *local,
		     size_t *remote);

int kvc_delete(kvc_client *c, const struct kvc_key *key);

/* Keep @key from eviction for @lease_ms (0: daemon maximum) or until kvc_unpin or this client
 * detaches. Pins nest; a client holds at most kvcd's max_pins (-EDQUOT beyond). */
int kvc_pin(kvc_client *c, const struct kvc_key *key, uint32_t lease_ms);
int kvc_unpin(kvc_client *c, const struct kvc_key *key);

/* ---- introspection (what kvcctl shows) ---------------------------------------------------- */

#define KVC_MAX_NODES 16

struct kvc_op_stats {
	uint64_t count, errors;
	uint64_t p50_ns, p99_ns, p999_ns;
};

struct kvc_stats {
	uint32_t nnodes, clients;
	uint64_t boot_token, uptime_ms;
	uint64_t blocks, bytes_used, bytes_free, bytes_in, bytes_stored;
	uint64_t hits, misses, evictions, pinned, bad_requests, checksum_failures;
	uint64_t metadata_bytes;
	struct {
		int32_t node;
		uint32_t hugepages;
		uint64_t bytes_total, bytes_used, blocks;
	} node[KVC_MAX_NODES];
	struct kvc_op_stats op[13]; /* indexed by KVC_OP_*, the admin ops and SELECT */
	uint32_t nns, pad;
	struct {
		char name[64];
		char policy[96]; /* canonical policy string */
		uint64_t blocks;
		uint64_t bytes_in;     /* what the engines sent */
		uint64_t bytes_stored; /* what the pool holds: codes, scales, headers */
		uint64_t fallbacks;    /* STOREs kept raw: the policy did not fit the layout */
	} ns[32];
	/* since 0.4 */
	struct {
		uint64_t hits, misses, evictions; /* of ns[i] */
		uint64_t quota;			  /* pool bytes it may hold; 0: no quota */
		uint64_t charged;		  /* pool bytes it holds */
	} ns_ext[32];
	/* service times in kvcd: op_hist[op][k] counts requests that took 0 ns (k = 0) or
	 * [2^(k-1), 2^k) ns */
	uint64_t op_hist[13][64];
	uint32_t version;  /* kvcd's release: major << 16 | minor << 8 | patch (0: before 0.4) */
	uint32_t protocol; /* its protocol: major << 16 | minor */
	struct {
		uint32_t enabled, nodes; /* a remote tier is configured; cluster nodes known */
		uint64_t slots_ok;	 /* of 16384, with a connected owner */
		uint64_t puts, gets, hits, misses, errors;
		uint64_t dropped;  /* puts dropped: the queue was full */
		uint64_t rejected; /* values that did not check out */
		uint64_t bytes_out, bytes_in;
		uint64_t get_p50_ns, get_p99_ns;
	} remote;
	/* the GPU tier (protocol 2.3): the CUDA devices kvcd found; status KVC_GPU_* */
	struct {
		int32_t status, driver_version;
		uint32_t ndev, pad;
		char why[96];
		struct {
			int32_t ordinal, numa_node; /* numa_node: -1 unknown */
			uint64_t mem_bytes;
			char name[64];
			char pci[16];
		} dev[16];
	} gpu;
	/* since 0.6 (protocol 2.4): each device at work, as gpu.dev[] lists them */
	struct {
		uint32_t clients, pad; /* clients with GPU staging on it */
		uint64_t staging_bytes;
		uint64_t stores, fetches;      /* GPU STOREs and FETCHes done */
		uint64_t encoded, decoded;     /* blocks encoded or decoded on the GPU */
		uint64_t bounced;	       /* through a bounce buffer and the CPU codec */
		uint64_t errors;	       /* copies or kernels that failed */
		uint64_t d2h_bytes, h2d_bytes; /* bytes copied off and onto the device */
		uint64_t d2h_ns, h2d_ns;       /* time those copies took, kernels included */
	} gpu_use[16];
	/* since 0.6: RECOMPRESS's counts (op_more[0]), and what it did to blocks */
	struct kvc_op_stats op_more[4];
	struct {
		uint64_t blocks;		    /* rewritten */
		uint64_t busy;			    /* left raw: read, pinned or gone meanwhile */
		uint64_t kept;			    /* left raw: not encodable, or no smaller */
		uint64_t bytes_before, bytes_after; /* pool bytes of the rewritten blocks */
	} recompress;
	/* since 0.7: the learned bases of ns[i] (kvc_calibrate) */
	struct {
		uint32_t count;	 /* bases kvcd keeps for it (its newest ones) */
		uint32_t newest; /* the version learned= STOREs use; 0: none */
		uint64_t bytes;	 /* pool bytes they hold */
	} ns_bases[32];
	/* since 0.9 (protocol 2.9): each device's GPU pool, as gpu.dev[] lists them: copies of
	 * host blocks in device memory, which GPU FETCHes read without crossing PCIe */
	struct {
		uint64_t pool_bytes;   /* 0: no pool on that device */
		uint64_t bytes_used;   /* by copies, the allocator's headers included */
		uint64_t blocks;       /* copies held */
		uint64_t hits, misses; /* GPU FETCHes served from a copy, or not */
		uint64_t promotions;   /* copies made (GPU STORE, or a FETCH that missed) */
		uint64_t demotions;    /* copies dropped for room, least recently used first */
		uint64_t no_room;      /* copies not made: no room without those in use, or
					* over the high watermark alone */
	} gpu_pool[16];
};

enum {
	KVC_GPU_OFF = 0,	  /* [gpu] devices = none */
	KVC_GPU_NO_DRIVER = 1,	  /* no CUDA driver (libcuda.so.1) */
	KVC_GPU_DRIVER_ERROR = 2, /* the driver failed (why says how) */
	KVC_GPU_NO_DEVICE = 3,	  /* none of the devices asked for */
	KVC_GPU_READY = 4,
};

/* Name of op @i ("nop", "store", ..., "select", "recompress"), or NULL past the end; its
 * counts are kvc_stats_op(st, i). */
const char *kvc_op_name(unsigned i);

/* The counts of op @i (below 17): kvc_stats.op for the first 13, then op_more. */
static inline const struct kvc_op_stats *kvc_stats_op(const struct kvc_stats *st, unsigned i)
{
	return i < 13 ? &st->op[i] : &st->op_more[i - 13];
}

/* Fill the first @size bytes of @st (pass sizeof(*st)); fields beyond what this library knows
 * are zeroed. Returns 0 or -errno. */
int kvc_stats(kvc_client *c, struct kvc_stats *st, size_t size);

/* @st in the Prometheus text exposition format (what kvcd serves on /metrics), into @buf of
 * @len bytes, NUL-terminated when it fits. Returns the length of the whole text: when it is
 * not below @len, call again with a larger buffer. */
size_t kvc_stats_prometheus(const struct kvc_stats *st, char *buf, size_t len);

struct kvc_block_info {
	struct kvc_key key;
	struct kvc_layout layout;
	uint64_t bytes;
	int32_t node;
	uint32_t pins;
	uint64_t hits;
};

/* Blocks of this client's namespace from index @start on: up to @max entries of @size bytes
 * each (pass sizeof(*out)) into @out. Returns the count (0 at the end). */
int kvc_list(kvc_client *c, size_t start, struct kvc_block_info *out, size_t max, size_t size);

struct kvc_client_info {
	uint32_t client_id;
	int32_t pid;
	uint32_t uid, gid;
	int32_t node;
	uint32_t worker;
	uint64_t requests, bad_requests;
	char ns[64];
};

/* Attached clients: up to @max entries of @size bytes each (pass sizeof(*out)). Returns the
 * count. */
int kvc_clients(kvc_client *c, struct kvc_client_info *out, size_t max, size_t size);

/* Evict unpinned blocks until @mib MiB are free (0: evict every unpinned block). Needs the
 * daemon's uid or root. Returns the number of blocks evicted, or -EPERM. */
int kvc_evict(kvc_client *c, uint32_t mib);

/* Learn a basis for the learned= policies of this session's namespace from up to @blocks of
 * its raw blocks (0: as many as kvcd reads, KVCD_BASIS_MAX_TOKENS tokens at most, all of the
 * first block's shape): for each (layer, KV head), K's and V's leading directions, as many
 * as keep @energy percent (1..100) of their rows' second moment. STOREs under learned= then
 * keep only each row's coefficients over it; blocks stored under an older basis still decode
 * while kvcd keeps it (its 8 newest per namespace). Needs the daemon's uid or root. Returns
 * the basis's version (1, 2, ...) and its bytes in *@bytes (may be NULL); -EPERM, -EINVAL,
 * -ENOENT (no raw block to learn from), -ENOSYS (kvcd lacks LAPACKE), -ENOSPC, -EDQUOT.
 * kvcd works on it for up to seconds with a large model (kvcctl waits up to 10 minutes):
 * attach with an op_timeout_ms that allows it, or -ETIMEDOUT comes back while kvcd goes on
 * and keeps the basis. */
int kvc_calibrate(kvc_client *c, uint32_t blocks, uint32_t energy, uint64_t *bytes);
/* Since 0.8 (kvcd 0.8, protocol 2.8): kvc_calibrate with what the engine knows of its model,
 * for policies with learned=on, kbits and vbits. @weight[@layers][2] (NULL and 0: none): what
 * an error in each layer's K, then V, costs the model (e.g. how much the loss grows per unit
 * of squared error put there, measured on calibration prompts), each finite and above 0,
 * @layers the blocks' own: bits go where an error costs more. @rope (0: none): the model's
 * RoPE base (pairs 2i, 2i+1 of each head), so that keys are learned and coded as they were
 * before RoPE; kvcd finds each block's position from the parents its STOREs named
 * (kvc_store_chained), reads no block whose chain is broken, and takes a block stored without
 * a parent as starting at 0. Also -EINVAL when the weights are not for the blocks' layers,
 * -EMSGSIZE when they do not fit the scratch area; a kvcd before 0.8 ignores both. */
int kvc_calibrate_model(kvc_client *c, uint32_t blocks, uint32_t energy, uint32_t rope,
			const float *weight, uint32_t layers, uint64_t *bytes);

/* Message for a return value of this library ("Success" for 0). Never NULL. */
const char *kvc_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif /* KVC_H */
