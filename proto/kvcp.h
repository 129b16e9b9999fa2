/* kvcp.h - the contract between kvcd and its clients.
 *
 * Everything here is shared-memory layout, wire formats and ring operations: fixed-width types,
 * offsets never pointers, no syscalls, no allocation. The daemon and libkvcclient both include
 * this file and nothing else of each other. Every size and offset that is ABI is pinned by a
 * static_assert at the bottom. Layout changes bump KVCP_MAJOR (incompatible) or KVCP_MINOR
 * (compatible additions in reserved space).
 */
#ifndef KVCP_H
#define KVCP_H

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define KVCP_MAGIC     0x3144434b4356434bull /* "KCVCKCD1" little-endian */
#define KVCP_MAJOR     2
#define KVCP_MINOR     9
#define KVCP_CACHELINE 64

/* Feature bits. A client refuses a segment with incompat bits it does not know. */
#define KVCP_INCOMPAT_KNOWN  0ull
#define KVCP_COMPAT_CHECKSUM (1ull << 0) /* blocks carry an xxh3 checksum */
#define KVCP_COMPAT_PHASE \
	(1ull << 1) /* 2.6: both rings' entries carry a phase bit (KVCP_ATTACH_F_PHASE): a  \
		     * consumer sees an entry is there from the entry itself, not from prod */

/* ---- attach handshake (UNIX socket, SOCK_SEQPACKET) ---------------------------------- */

#define KVCP_NS_MAX 64 /* namespace name, NUL included */

struct kvcp_attach_req {
	uint32_t magic32; /* KVCP_ATTACH_MAGIC */
	uint16_t major, minor;
	uint64_t staging_size; /* bytes wanted; 0 = daemon default */
	int32_t numa_node;     /* placement hint, -1 = from the CPUs the client runs on */
	uint32_t flags;	       /* reserved, 0 */
	uint64_t cpus[16];     /* the client's CPU affinity mask, 1024 CPUs */
	char ns[KVCP_NS_MAX];  /* namespace, NUL-terminated */
	/* 2.4, with KVCP_ATTACH_F_GPU: GPU staging wanted on each device of @gpu_mask (bit i:
	 * kvcd's device i, as STATS lists them; 0: every one), of @gpu_staging_size bytes each
	 * (0: the daemon's default); else both 0 */
	uint64_t gpu_staging_size;
	uint64_t gpu_mask;
	uint64_t reserved[2]; /* 0 */
};

#define KVCP_ATTACH_F_GPU 1u /* GPU access (2.4): a struct kvcp_attach_gpu follows the reply */
#define KVCP_ATTACH_F_PHASE \
	2u /* 2.6: phase-tagged ring entries (KVCP_COMPAT_PHASE in the header says granted);
	    * a kvcd before 2.6 refuses the attach with -EBADMSG, and the client asks again
	    * without it */

#define KVCP_ATTACH_MAGIC 0x4b564341u /* "ACVK" */

struct kvcp_attach_rep {
	int32_t status; /* 0 or -errno; fds follow only on 0 */
	uint32_t client_id;
	uint64_t boot_token;   /* changes each time kvcd starts */
	uint64_t ctrl_size;    /* size of fd 0, the control segment */
	uint64_t staging_size; /* size of fd 1, the staging segment */
	uint64_t gpu_mask;     /* 2.4: the devices whose GPU staging follows (KVCP_ATTACH_F_GPU) */
	uint64_t reserved[3];
};

/* ---- shared segment header -------------------------------------------------------------- */

/* One SPSC ring's indices. Free-running uint32 counters, masked on use. The producer owns
 * @prod, the consumer owns @cons; each sits on its own cache line. @flags and @futex carry the
 * sleep/wake protocol (see KVCP_RING_NEED_WAKEUP). */
struct kvcp_ring {
	uint32_t prod;
	uint32_t pad0[15];
	uint32_t cons;
	uint32_t pad1[15];
	uint32_t flags; /* written by the side that may sleep */
	uint32_t futex; /* bumped by the side that wakes it, then FUTEX_WAKE */
	uint32_t hint;	/* 2.7: in the CQ, how the client waits (KVCP_HINT_SPIN/SLEEP); in the
			 * SQ, KVCP_HINT_LONG or 0 (below) */
	uint32_t pad2[13];
};

/* SQ: the daemon sets NEED_WAKEUP before it sleeps; a client that sees it after publishing
 * bumps sq.futex and wakes. CQ: the client sets NEED_WAKEUP before it sleeps; the daemon that
 * sees it after publishing bumps cq.futex and wakes. */
#define KVCP_RING_NEED_WAKEUP 1u

/* cq.hint (2.7), written by the client when its way of waiting changes, read by the worker
 * after it publishes (the line it reads flags from): whether the worker, having answered,
 * should spin for the client's next request. A client that sleeps at once takes a wake-up to
 * send it, and spinning meanwhile only keeps a core from it on a busy machine; one that spins
 * sends it at once, even if this answer had to wake it. 0 (clients before 2.7): the worker
 * spins unless it had to wake the client. */
#define KVCP_HINT_SPIN	1u
#define KVCP_HINT_SLEEP 2u

/* sq.hint (2.7), written by the worker: the request it has in hand for this client takes
 * long (it waits on the remote tier, a GPU's mover or a CALIBRATE's thread, or runs in slices
 * between other clients'), so a client spinning for its answer had better sleep; cleared before the
 * answer is published. A busy-polling client (KVC_ATTACH_BUSY_POLL) spins regardless. */
#define KVCP_HINT_LONG 1u

struct kvcp_shm_hdr {
	uint64_t magic; /* stored last, with release order */
	uint16_t major, minor;
	uint32_t hdr_size;
	uint64_t incompat, compat;
	uint64_t boot_token;
	uint32_t client_id;
	uint32_t sq_entries, cq_entries;
	uint32_t scratch_size;
	uint64_t sq_off, cq_off; /* offsets of the struct kvcp_sqe/cqe arrays */
	uint64_t scratch_off;	 /* library-owned scratch area for small requests */
	uint64_t ctrl_size, staging_size;
	uint64_t reserved[20]; /* 0 */
	struct kvcp_ring sq;   /* cache-line aligned from here on */
	struct kvcp_ring cq;
};

/* ---- blocks, keys, layouts -------------------------------------------------------------- */

struct kvcp_key {
	uint64_t hi, lo;
};

enum kvcp_dtype {
	KVCP_F32 = 1,
	KVCP_F16 = 2,
	KVCP_BF16 = 3
};

/* A block is the KV of one chunk of tokens for all layers of a model, memory order
 * [layer][K,V][token][head][dim]. */
struct kvcp_layout {
	uint8_t dtype;
	uint8_t codec; /* how the pool copy is encoded; 0 = none (raw) */
	uint16_t layers;
	uint16_t kv_heads;
	uint16_t head_dim;
	uint32_t tokens;
	uint32_t reserved; /* 0 */
};

static inline uint32_t kvcp_dtype_size(uint32_t dtype)
{
	return dtype == KVCP_F32 ? 4 : (dtype == KVCP_F16 || dtype == KVCP_BF16) ? 2 : 0;
}

/* Bytes of a raw block with layout @l, or 0 when the layout is invalid or overflows. */
static inline uint64_t kvcp_layout_bytes(const struct kvcp_layout *l)
{
	uint64_t n = kvcp_dtype_size(l->dtype);

	if (!n || !l->layers || !l->kv_heads || !l->head_dim || !l->tokens || l->reserved)
		return 0;
	n *= 2ull * l->layers * l->kv_heads * l->head_dim; /* < 2^51, cannot overflow */
	if (l->tokens > (UINT64_C(1) << 40) / n)
		return 0;
	return n * l->tokens;
}

/* ---- requests and completions ----------------------------------------------------------- */

enum kvcp_op {
	KVCP_OP_NOP = 0,
	KVCP_OP_STORE = 1,   /* key, layout, off, len: store len bytes from staging[off];
				 * arg = position of the block's first token in its sequence */
	KVCP_OP_FETCH = 2,   /* key, off, len = capacity: write the block to staging[off] */
	KVCP_OP_LOOKUP = 3,  /* off, len = n keys * 16: res = longest cached prefix (count) */
	KVCP_OP_DELETE = 4,  /* key */
	KVCP_OP_PIN = 5,     /* key, arg = lease in ms (0 = daemon maximum) */
	KVCP_OP_UNPIN = 6,   /* key */
	KVCP_OP_STATS = 7,   /* off, len: write struct kvcp_stats */
	KVCP_OP_LIST = 8,    /* off, len, arg = start index: write struct kvcp_list_ent[] */
	KVCP_OP_CLIENTS = 9, /* off, len: write struct kvcp_client_ent[] */
	KVCP_OP_EVICT = 10,  /* arg = MiB to free (0 = all unpinned); admin only */
	KVCP_OP_POLICY = 11, /* off, len: policy string; arg = 0: res = session slot 1..8 for
				 * layout.codec on STORE; arg = KVCP_POLICY_NS: set the
				 * namespace's policy (admin only). On -EINVAL the reason is
				 * written at off (NUL-terminated, cqe.value bytes). */
	KVCP_OP_SELECT = 12, /* off, len: struct kvcp_select, its keys, its queries; res = n
				 * blocks, struct kvcp_select_hit[n] written back at off */
	/* 2.4: off, len: struct kvcp_recompress and its keys; layout.codec: the policy (0: the
	 * namespace's, 1..8 this session's); res = blocks rewritten, value = pool bytes freed */
	KVCP_OP_RECOMPRESS = 13,
	/* 2.5: learn a basis for learned= policies from the session's namespace's raw blocks
	 * (admin only): arg = blocks to read (KVCP_CALIBRATE_ARG; 0: as many as the daemon
	 * reads) and the energy the ranks keep; res = the new basis's version, value = its
	 * bytes. 2.8: off, len: a struct kvcp_calibrate and its weights (len 0: none) */
	KVCP_OP_CALIBRATE = 14,
	KVCP_OP__COUNT
};

/* Ops with an entry in kvcp_stats.op[] and op_hist[] (those of 2.3); later ones are in
 * kvcp_stats.op_more[]. */
#define KVCP_OP_STATS_N 13
#define KVCP_OP_MORE	4

#define KVCP_SQE_F_SCRATCH 1u /* off/len address the scratch area, not staging */
#define KVCP_SQE_F_SCORES \
	2u /* STORE: one f32 importance score per token follows the block;
				 * len = block bytes + 4 * tokens, off + block bytes 4-aligned */
#define KVCP_SQE_F_AUX \
	4u /* STORE: a struct kvcp_aux and its arrays follow the block (and
				 * the scores, if any), 4-aligned; len includes them */
#define KVCP_SQE_F_PARENT \
	8u /* STORE (2.3): the last 16 bytes of off..off + len are the
				 * block's parent, the struct kvcp_key of the chunk before it in
				 * its chain, 8-aligned; len includes them. A hint for eviction */
#define KVCP_SQE_F_GPU \
	16u /* STORE, FETCH (2.4): off/len address the session's GPU staging on
				 * device sqe.gpu, off a multiple of KVCP_GPU_ALIGN; with no
				 * other flag but KVCP_SQE_F_PARENT on a STORE (its trailer in
				 * GPU staging too) */
#define KVCP_GPU_ALIGN	 16
/* With KVCP_COMPAT_PHASE: the phase bit of an SQE, in its flags, and of a CQE, in its flags
 * (never set otherwise; a consumer clears it in its copy) */
#define KVCP_SQE_F_PHASE 0x80u
#define KVCP_CQE_F_PHASE 1u
#define KVCP_SQE_F_KNOWN                                                               \
	(KVCP_SQE_F_SCRATCH | KVCP_SQE_F_SCORES | KVCP_SQE_F_AUX | KVCP_SQE_F_PARENT | \
	 KVCP_SQE_F_GPU)

/* What an engine hands over for token selection (policies with select=h2o or snapkv). After
 * the header, f32 arrays in this order, each present when its bit is in @what:
 *   KVCP_AUX_ATTN     [layers][kv_heads][tokens]: the attention each token of the block has
 *                     received, summed over the query heads of its KV head's group and over
 *                     the later queries (H2O's accumulated score)
 *   KVCP_AUX_QUERIES  [layers][q_heads][window][head_dim]: the post-RoPE queries of an
 *                     observation window (SnapKV); query i sits at block-relative position
 *                     q_pos + i and sees the block's tokens up to there. Then
 *                     [layers][q_heads][window]: each query's log-sum-exp of q.k / sqrt(d)
 *                     over every key it attended in its sequence, so kvcd computes its true
 *                     attention over the block's keys. */
#define KVCP_AUX_MAGIC	    0x5841564bu /* "KVAX" */
#define KVCP_AUX_ATTN	    1u
#define KVCP_AUX_QUERIES    2u
#define KVCP_AUX_MAX_WINDOW 4096

struct kvcp_aux {
	uint32_t magic;	      /* KVCP_AUX_MAGIC */
	uint32_t what;	      /* KVCP_AUX_* */
	uint16_t q_heads;     /* QUERIES: query heads, a multiple of kv_heads */
	uint16_t window;      /* QUERIES: 1..KVCP_AUX_MAX_WINDOW */
	int32_t q_pos;	      /* QUERIES: block-relative position of the first window query */
	uint64_t reserved[2]; /* 0 */
};

/* Bytes of the arrays after a struct kvcp_aux for blocks of layout @l, or 0 when @a is invalid
 * for it (unknown bits, no bits, bad magic, a QUERIES header that does not fit). */
static inline uint64_t kvcp_aux_bytes(const struct kvcp_aux *a, const struct kvcp_layout *l)
{
	uint64_t n = 0;

	if (a->magic != KVCP_AUX_MAGIC || !a->what ||
	    (a->what & ~(KVCP_AUX_ATTN | KVCP_AUX_QUERIES)) || a->reserved[0] || a->reserved[1] ||
	    !kvcp_layout_bytes(l))
		return 0;
	if (a->what & KVCP_AUX_ATTN)
		n += 4ull * l->layers * l->kv_heads * l->tokens;
	if (a->what & KVCP_AUX_QUERIES) {
		if (!a->q_heads || a->q_heads % l->kv_heads || !a->window ||
		    a->window > KVCP_AUX_MAX_WINDOW)
			return 0;
		n += 4ull * l->layers * a->q_heads * a->window * (l->head_dim + 1u);
	} else if (a->q_heads || a->window || a->q_pos) {
		return 0;
	}
	return n;
}

/* STORE's layout.codec: 0 = the namespace's policy, 1..KVCP_POLICY_SLOTS = a policy this
 * session registered with KVCP_OP_POLICY. FETCH's layout.codec: the codec that held the block
 * (0 raw, 1 int, 2 fp8, 3 kivi), plus KVCP_CODEC_SPARSE when its policy dropped tokens; the
 * bytes written are always in the engine's dtype. */
#define KVCP_CODEC_NONE	  0u
#define KVCP_CODEC_INT	  1u
#define KVCP_CODEC_FP8	  2u
#define KVCP_CODEC_KIVI	  3u
#define KVCP_CODEC_SPARSE 0x80u
/* 2.5: a learned basis (KVCP_OP_CALIBRATE), kept by kvcd under a KVCP_BASIS_KEY_HI key of its
 * namespace: LIST shows it; STORE, FETCH, DELETE and PIN of such keys are refused (-EPERM) */
#define KVCP_CODEC_BASIS  0x40u
#define KVCP_BASIS_KEY_HI \
	0x7369736162647663ull /* "cvdbasis": key.hi of the bases, key.lo their version */
/* CALIBRATE's arg: @blocks (0..65535) and the @energy percent (1..100) the ranks keep */
#define KVCP_CALIBRATE_ARG(blocks, energy) ((uint32_t)(blocks) | (uint32_t)(energy) << 16)

/* 2.8: what an engine tells CALIBRATE beyond the blocks, at off (4-aligned), len = its size
 * with the weights. Then f32 weight[layers][2]: what an error in each layer's K, and V, costs
 * the model (e.g. the loss's growth per unit of squared error, as the engine measured it on
 * calibration prompts), each finite and above 0; learned=on policies with kbits and vbits spend
 * their bits where an error costs most. Without them every weight is 1. With @rope, keys are
 * learned (and such blocks coded) as they were before RoPE; a block's position comes from its
 * chain (the parents its STOREs named, a block stored without one being at 0), and blocks
 * whose chain is broken are not read. */
#define KVCP_CALIBRATE_MAGIC 0x4c43564bu /* "KVCL" */
struct kvcp_calibrate {
	uint32_t magic;	   /* KVCP_CALIBRATE_MAGIC */
	uint32_t layers;   /* 0, or the blocks' layers: weight[] holds 2 x layers floats */
	uint32_t rope;	   /* the model's RoPE base (e.g. 10000), pairs (2i, 2i+1); 0: none */
	uint32_t reserved; /* 0 */
	uint64_t pad;	   /* 0 */
};

/* What FETCH writes for a block whose policy selected tokens (layout.codec has
 * KVCP_CODEC_SPARSE): this header, then
 *   uint32_t count[layers][kv_heads]   tokens kept per (layer, KV head); they may differ
 *   uint32_t token[total]              block-relative index of each kept token, ascending per
 *                                      (layer, head), the (layer, head) lists in that order
 *   float bias[total]                  log of how many tokens each kept token stands for
 *                                      (0 unless others were merged into it): add it to the
 *                                      token's attention logit
 *   K and V rows                       in the engine's dtype: per layer, K then V, per head,
 *                                      count[layer][head] rows of head_dim
 * Tokens not listed were dropped: the engine masks them out of attention. */
#define KVCP_SPARSE_MAGIC 0x3153564bu /* "KVS1" */

struct kvcp_sparse {
	uint32_t magic;	   /* KVCP_SPARSE_MAGIC */
	uint32_t total;	   /* kept tokens over every (layer, head) */
	uint32_t tokens;   /* tokens of the block as stored */
	uint32_t reserved; /* 0 */
};

static inline uint64_t kvcp_sparse_bytes(const struct kvcp_layout *l, uint64_t total)
{
	return sizeof(struct kvcp_sparse) + 4ull * l->layers * l->kv_heads +
	       total * (8ull + 2ull * l->head_dim * kvcp_dtype_size(l->dtype));
}
#define KVCP_POLICY_SLOTS 8
#define KVCP_POLICY_NS	  1u
#define KVCP_POLICY_MAX	  256 /* policy string, NUL included */
#define KVCP_POLICY_STR	  96  /* canonical policy string in stats */

struct kvcp_sqe {
	uint8_t opcode;
	uint8_t flags;
	uint16_t gpu;	    /* KVCP_SQE_F_GPU: the device (kvcd's index); else 0 */
	uint32_t arg;	    /* op-specific (lease ms, list start, MiB) */
	uint64_t user_data; /* echoed in the completion */
	struct kvcp_key key;
	uint64_t off;
	uint64_t len;
	struct kvcp_layout layout;
};

struct kvcp_cqe {
	uint64_t user_data;
	int32_t res;		   /* >= 0 op-specific, or -errno */
	uint32_t flags;		   /* reserved, 0 */
	uint64_t value;		   /* bytes written (FETCH, STATS, LIST) */
	struct kvcp_layout layout; /* FETCH: layout of the block written */
	uint64_t reserved[3];
};

/* SELECT (Quest): which of @nkeys candidate blocks matter most for the current queries. Every
 * stored block keeps the channel-wise min and max of its keys per (layer, KV head); a block's
 * score is the largest upper bound of q.k / sqrt(head_dim) over its keys at @layer and the
 * query heads (query head h reads KV head h / (q_heads / kv_heads)). After this header:
 * struct kvcp_key keys[nkeys], then float q[q_heads][head_dim]. The answer replaces the
 * request: the best min(k, candidates found) blocks, highest score first (ties: lower index).
 * Candidates that are not stored, or whose layout has no such layer, another head_dim, or a
 * kv_heads that does not divide q_heads, are skipped. */
#define KVCP_SELECT_MAX_KEYS  65536
#define KVCP_SELECT_MAX_QUERY 65536 /* q_heads * head_dim */

struct kvcp_select {
	uint32_t nkeys; /* 1..KVCP_SELECT_MAX_KEYS */
	uint32_t k;	/* 1..nkeys */
	uint16_t layer;
	uint16_t q_heads;
	uint16_t head_dim;
	uint16_t reserved0;   /* 0 */
	uint64_t reserved[2]; /* 0 */
};

/* RECOMPRESS: rewrite the chain of blocks @keys (consecutive chunks of one sequence, the first
 * at position @pos) under a policy, once the engine's prefill is done. With token selection
 * the chain is selected as one block holding all of it would be: one observation window (the
 * aux section, as a STORE's, for a block of the chain's layout and every token of it; q_pos
 * counts from the first block's first token), one budget over the chain's tokens, sinks at
 * its start and the window at its end. Only blocks stored raw are rewritten: the chain's
 * first blocks may already be encoded (a shared prefix, compressed before), and they are left
 * as they are and out of the selection; the chain ends at the first block that is missing,
 * or encoded after a raw one. A block someone else is reading or has pinned keeps its raw
 * bytes (counted as busy). The aux section is staging[aux_off, aux_off + aux_len) exactly
 * (aux_len 0: none); its attention array (KVCP_AUX_ATTN) holds as many tokens as that length
 * says, which may be more than the blocks found (a chain cut short by a missing block). This
 * header and the keys are read from the request's region. */
#define KVCP_RECOMPRESS_MAGIC	 0x4352564bu /* "KVRC" */
#define KVCP_RECOMPRESS_MAX_KEYS 4096

struct kvcp_recompress {
	uint32_t magic;		   /* KVCP_RECOMPRESS_MAGIC */
	uint32_t nkeys;		   /* 1..KVCP_RECOMPRESS_MAX_KEYS */
	uint32_t pos;		   /* sequence position of the first block's first token */
	uint32_t reserved0;	   /* 0 */
	uint64_t aux_off, aux_len; /* in staging */
	uint64_t reserved[2];	   /* 0 */
};

/* What RECOMPRESS did, since kvcd started (kvcp_stats.recompress). */
struct kvcp_recompress_stats {
	uint64_t blocks; /* rewritten */
	uint64_t busy;	 /* left raw: read, pinned or removed meanwhile */
	uint64_t kept;	 /* left raw: the policy could not encode it, or it saved nothing */
	/* pool bytes of the rewritten blocks, before and after */
	uint64_t bytes_before, bytes_after;
};

struct kvcp_select_hit {
	uint32_t index; /* into keys[] */
	float score;	/* the Quest bound */
};

/* ---- admin payloads written into the scratch area --------------------------------------- */

#define KVCP_MAX_NODES	  16
#define KVCP_MAX_NS_STATS 32
#define KVCP_HIST_BUCKETS 64

struct kvcp_node_stats {
	int32_t node;	    /* OS NUMA node id */
	uint32_t hugepages; /* 1 when the pool is backed by huge pages */
	uint64_t bytes_total, bytes_used, blocks;
};

struct kvcp_op_stats {
	uint64_t count, errors;
	uint64_t p50_ns, p99_ns, p999_ns; /* service time inside the daemon */
};

struct kvcp_ns_stats {
	char name[KVCP_NS_MAX];
	char policy[KVCP_POLICY_STR]; /* canonical string */
	uint64_t blocks, bytes_in, bytes_stored;
	uint64_t fallbacks; /* STOREs kept raw: the policy did not fit the layout */
};

/* Since 2.2: what the namespace of ns[i] did, in ns_ext[i]. */
struct kvcp_ns_ext {
	uint64_t hits, misses, evictions;
	uint64_t quota;	  /* bytes; 0: none */
	uint64_t charged; /* pool bytes it holds */
};

/* Since 2.6: the learned bases (KVCP_OP_CALIBRATE) of the namespace of ns[i], in
 * ns_bases[i]. */
struct kvcp_ns_bases {
	uint32_t count;	 /* bases kvcd keeps for it (its newest ones) */
	uint32_t newest; /* the version learned= STOREs use; 0: none */
	uint64_t bytes;	 /* pool bytes they hold */
};

/* Since 2.2: the remote tier (zero when none is configured). */
struct kvcp_remote_stats {
	uint32_t enabled, nodes;
	uint64_t slots_ok; /* of 16384, with a connected owner */
	uint64_t puts, gets, hits, misses, errors;
	uint64_t dropped;  /* puts refused: the queue was full */
	uint64_t rejected; /* values that did not check out */
	uint64_t bytes_out, bytes_in;
	uint64_t get_p50_ns, get_p99_ns; /* of a batch of gets */
};

/* Since 2.3: the GPU tier, as far as it is built: the CUDA devices kvcd found (its pools,
 * the hand-off to engines and the movers are not built yet). */
#define KVCP_MAX_GPUS 16
enum kvcp_gpu_status {
	KVCP_GPU_OFF = 0,	   /* [gpu] devices = none */
	KVCP_GPU_NO_DRIVER = 1,	   /* libcuda.so.1 could not be loaded */
	KVCP_GPU_DRIVER_ERROR = 2, /* it could, but cuInit or a query failed (why says which) */
	KVCP_GPU_NO_DEVICE = 3,	   /* the driver sees none of the devices asked for */
	KVCP_GPU_READY = 4,	   /* ndev devices found */
};

struct kvcp_gpu_dev {
	int32_t ordinal;
	int32_t numa_node; /* OS node nearest the device (its PCI function's); -1: unknown */
	uint64_t mem_bytes;
	char name[64];
	char pci[16]; /* domain:bus:device.function */
};

struct kvcp_gpu_stats {
	int32_t status;		/* enum kvcp_gpu_status */
	int32_t driver_version; /* cuDriverGetVersion's, e.g. 13000; 0: none */
	uint32_t ndev, pad;
	char why[96]; /* what the status rests on, in words */
	struct kvcp_gpu_dev dev[KVCP_MAX_GPUS];
};

/* 2.4: the GPU tier at work on one device: its clients' GPU staging and the copies its mover
 * made for them. */
struct kvcp_gpu_use {
	uint32_t clients, pad; /* clients with GPU staging on it */
	uint64_t staging_bytes;
	uint64_t stores, fetches;      /* GPU STOREs and FETCHes done (errors included) */
	uint64_t encoded, decoded;     /* blocks encoded or decoded on it */
	uint64_t bounced;	       /* through a bounce buffer and the CPU codec */
	uint64_t errors;	       /* copies or kernels that failed */
	uint64_t d2h_bytes, h2d_bytes; /* bytes copied off and onto it */
	uint64_t d2h_ns, h2d_ns;       /* time spent on those copies, kernels included */
};

/* 2.9: a device's GPU pool: copies of host blocks kept in device memory, which GPU FETCHes
 * read without crossing PCIe. */
struct kvcp_gpu_pool {
	uint64_t pool_bytes;   /* 0: the device has no pool */
	uint64_t bytes_used;   /* by copies, the allocator's headers included */
	uint64_t blocks;       /* copies held */
	uint64_t hits, misses; /* GPU FETCHes served from a copy, or not */
	uint64_t promotions;   /* copies made (by a GPU STORE, or a FETCH that missed) */
	uint64_t demotions;    /* copies dropped for room, least recently used first */
	uint64_t no_room;      /* copies not made: no room without those in use, or over
				 * the high watermark alone */
};

/* 2.4: after an attach reply whose gpu_mask is not 0, a second message with one fd per device
 * of the mask, lowest index first: each a CUDA VMM allocation exported as a POSIX fd
 * (cuMemImportFromShareableHandle), the client's GPU staging on that device. */
struct kvcp_attach_gpu {
	uint32_t ndev, pad;
	struct kvcp_attach_gpu_dev {
		uint32_t index;	 /* kvcd's device index */
		int32_t ordinal; /* kvcd's CUDA ordinal; the client finds the device by @pci */
		char pci[16];	 /* domain:bus:device.function */
		uint64_t size;	 /* bytes of the allocation */
	} dev[KVCP_MAX_GPUS];
};

struct kvcp_stats {
	uint32_t nnodes, clients;
	uint64_t boot_token, uptime_ms;
	uint64_t blocks, bytes_used, bytes_free, bytes_in, bytes_stored;
	uint64_t hits, misses, evictions, pinned, bad_requests, checksum_failures;
	uint64_t metadata_bytes; /* daemon bytes spent on index and block records */
	struct kvcp_node_stats node[KVCP_MAX_NODES];
	struct kvcp_op_stats op[KVCP_OP_STATS_N];
	uint32_t nns, pad;
	struct kvcp_ns_stats ns[KVCP_MAX_NS_STATS];
	/* 2.2: appended; a STATS of KVCP_STATS_SIZE_2_1 bytes gets what 2.1 sent */
	struct kvcp_ns_ext ns_ext[KVCP_MAX_NS_STATS];
	/* service times: op_hist[op][k] counts requests of k == 0: 0 ns, else [2^(k-1), 2^k) ns */
	uint64_t op_hist[KVCP_OP_STATS_N][KVCP_HIST_BUCKETS];
	uint32_t version;  /* kvcd's release: major << 16 | minor << 8 | patch */
	uint32_t protocol; /* KVCP_MAJOR << 16 | KVCP_MINOR */
	struct kvcp_remote_stats remote;
	struct kvcp_gpu_stats gpu;		    /* 2.3 */
	struct kvcp_gpu_use gpu_use[KVCP_MAX_GPUS]; /* 2.4: per device of gpu.dev[] */
	/* 2.4: ops from KVCP_OP_STATS_N on, and RECOMPRESS's work */
	struct kvcp_op_stats op_more[KVCP_OP_MORE];
	struct kvcp_recompress_stats recompress;
	struct kvcp_ns_bases ns_bases[KVCP_MAX_NS_STATS]; /* 2.6: of ns[i] */
	struct kvcp_gpu_pool gpu_pool[KVCP_MAX_GPUS];	  /* 2.9: per device of gpu.dev[] */
};

#define KVCP_STATS_SIZE_2_1 offsetof(struct kvcp_stats, ns_ext)

struct kvcp_list_ent {
	struct kvcp_key key;
	struct kvcp_layout layout;
	uint64_t bytes;
	int32_t node;
	uint32_t pins;
	uint64_t hits;
};

struct kvcp_client_ent {
	uint32_t client_id;
	int32_t pid;
	uint32_t uid, gid;
	int32_t node;
	uint32_t worker;
	uint64_t requests, bad_requests;
	char ns[KVCP_NS_MAX];
};

/* ---- ring operations -------------------------------------------------------------------- */

#define kvcp_load_acquire(p)	 __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define kvcp_store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define kvcp_load_relaxed(p)	 __atomic_load_n((p), __ATOMIC_RELAXED)
#define kvcp_store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define kvcp_fence()		 __atomic_thread_fence(__ATOMIC_SEQ_CST)

/* ---- a client's spin before it sleeps on its completion queue, adapted ---------------------
 * A wait either spins (up to the configured most, then sleeps) or sleeps at once. Spinning
 * saves the wake-up while the worker runs on another core; on a busy machine the spinner is
 * descheduled for whole slices, or holds the core the worker was woken onto, and sleeping at
 * once is faster. Which one pays depends on the load, the scheduler's placement and the cost
 * of a cross-core wake-up, so it is measured, not guessed: waits are timed, each way's mean
 * kept, and every so often a short trial of the other way is run. The trial's first wait is
 * not counted (the worker still does what the old way told it: sleeps, or spins for the next
 * request; cq.hint); nor is the first after it. The other way is adopted when its mean is
 * lower by a tenth in KVCP_SPIN_WINS trials in a row; a trial ends as soon as it cannot be.
 * While the way in use keeps winning, trials come less often, down to one a second, so a
 * quiet machine pays a couple of sleeping waits a second at most. A wait counts at most KVCP_SPIN_CAP_NS: the way changes a long
 * request's wait little, and one would drown the others.
 * A trial is short, and the cost of spinning on a busy machine comes as rare waits of a
 * whole time slice, which a trial seldom meets but a spell in use does. So the mean a way
 * had when it was dropped is kept, halved every KVCP_SPIN_FORGET_NS, and a trial of that way
 * is judged by the larger of that and its own mean: a way that lost over a long spell is not
 * taken back on a few lucky waits, and is once the loss is old. Nor is the way in use judged
 * on fewer than KVCP_SPIN_MIN_N waits. */
#define KVCP_SPIN_TRIAL	    7u		  /* counted waits of a trial of the other way */
#define KVCP_SPIN_EVERY_NS  20000000ull	  /* trials: at first, and after a change */
#define KVCP_SPIN_EVERY_MAX 1000000000ull /* trials: least often */
#define KVCP_SPIN_CAP_NS    10000000ull	  /* most a wait counts for */
#define KVCP_SPIN_FORGET_NS 250000000ull  /* a dropped way's mean halves this often */
#define KVCP_SPIN_MIN_N	    32u		  /* waits of the way in use before a trial */
#define KVCP_SPIN_WINS	    2u		  /* trials in a row the other way wins to be taken */

enum {
	KVCP_WAIT_SPIN,
	KVCP_WAIT_SLEEP
};

struct kvcp_spin {
	uint64_t max_ns;    /* what was configured: a spinning wait's most */
	uint64_t sum_ns[2]; /* counted waits' time in each way since the last trial */
	uint32_t n[2];	    /* and their number */
	uint32_t mode;	    /* KVCP_WAIT_*: what waits do outside trials */
	uint32_t cur;	    /* KVCP_WAIT_*: what the current wait does */
	uint32_t trial;	   /* waits left in a trial of the other way, its first included; 0: none */
	uint32_t settle;   /* the next wait is not counted */
	uint64_t next_ns;  /* when the next trial begins; 0: not set yet */
	uint64_t every_ns; /* between trials */
	uint64_t lost_ns[2]; /* each way's mean when it was last dropped; 0: never */
	uint64_t lost_at[2]; /* and when */
	uint32_t wins;	     /* trials in a row the other way won */
	uint32_t trials;     /* trials run and ways changed, for tests and statistics */
	uint32_t changes;
};

/* Trials less often: twice the time apart, up to KVCP_SPIN_EVERY_MAX. */
static inline void kvcp_spin_back_off(struct kvcp_spin *s)
{
	s->every_ns = s->every_ns * 2 < KVCP_SPIN_EVERY_MAX ? s->every_ns * 2 : KVCP_SPIN_EVERY_MAX;
}

/* What is remembered of @way's mean from when it was dropped, at @now_ns. */
static inline uint64_t kvcp_spin_lost(const struct kvcp_spin *s, uint32_t way, uint64_t now_ns)
{
	uint64_t halvings = (now_ns - s->lost_at[way]) / KVCP_SPIN_FORGET_NS;

	return halvings >= 64 ? 0 : s->lost_ns[way] >> halvings;
}

static inline void kvcp_spin_init(struct kvcp_spin *s, uint64_t max_ns)
{
	*s = (struct kvcp_spin){ .max_ns = max_ns,
				 .mode = KVCP_WAIT_SPIN,
				 .every_ns = KVCP_SPIN_EVERY_NS };
}

/* The way of the wait that begins now (@now_ns, also in s->cur), as how long it may spin. */
static inline uint64_t kvcp_spin_begin(struct kvcp_spin *s, uint64_t now_ns)
{
	uint32_t in = s->mode;

	if (!s->trial && !s->next_ns)
		s->next_ns = now_ns + s->every_ns;
	else if (!s->trial && now_ns >= s->next_ns && s->n[in] >= KVCP_SPIN_MIN_N) {
		if ((unsigned __int128)kvcp_spin_lost(s, in ^ 1, now_ns) * s->n[in] * 10 >=
		    (unsigned __int128)s->sum_ns[in] * 9) {
			/* the dropped way's loss is too recent for it to win: no trial yet */
			kvcp_spin_back_off(s);
			s->next_ns = now_ns + s->every_ns;
			s->sum_ns[in] = 0;
			s->n[in] = 0;
		} else {
			s->trial = KVCP_SPIN_TRIAL + 1;
			s->settle = 1;
			s->trials++;
		}
	}
	s->cur = s->trial ? s->mode ^ 1 : s->mode;
	return s->cur == KVCP_WAIT_SPIN ? s->max_ns : 0;
}

/* The wait begun by kvcp_spin_begin took @wait_ns; it ended at @now_ns. */
static inline void kvcp_spin_end(struct kvcp_spin *s, uint64_t wait_ns, uint64_t now_ns)
{
	uint32_t other = s->mode ^ 1, in = s->mode;
	unsigned __int128 a, b; /* other's mean below 9/10 of in's is a < b (no overflow) */
	uint64_t lost;

	if (s->settle)
		s->settle--;
	else {
		s->sum_ns[s->cur] += wait_ns < KVCP_SPIN_CAP_NS ? wait_ns : KVCP_SPIN_CAP_NS;
		s->n[s->cur]++;
	}
	if (!s->trial)
		return;
	s->trial--;
	/* the trial's sum, or what the dropped mean says its whole trial would sum to */
	lost = kvcp_spin_lost(s, other, now_ns);
	a = (unsigned __int128)s->sum_ns[other] * s->n[in] * 10;
	if (a < (unsigned __int128)lost * KVCP_SPIN_TRIAL * s->n[in] * 10)
		a = (unsigned __int128)lost * KVCP_SPIN_TRIAL * s->n[in] * 10;
	b = (unsigned __int128)s->sum_ns[in] * KVCP_SPIN_TRIAL * 9;
	if (s->trial && !(s->n[in] && a >= b))
		return;		  /* the trial goes on: it can still win */
	if (s->trial || a >= b) { /* lost */
		s->wins = 0;
		kvcp_spin_back_off(s);
	} else if (++s->wins < KVCP_SPIN_WINS) {
		/* won once: another trial soon, against a fresh spell of the way in use, so that one
		 * stall that fell in this spell (it would have whichever way it waited) decides
		 * nothing */
		s->every_ns = KVCP_SPIN_EVERY_NS;
	} else {
		s->lost_ns[in] = s->sum_ns[in] / s->n[in];
		s->lost_at[in] = now_ns;
		s->mode = other;
		s->every_ns = KVCP_SPIN_EVERY_NS;
		s->wins = 0;
		s->changes++;
	}
	s->trial = 0;
	s->settle = 1; /* back in the way: its first wait is the change's */
	s->sum_ns[0] = s->sum_ns[1] = 0;
	s->n[0] = s->n[1] = 0;
	s->next_ns = now_ns + s->every_ns;
}

static inline int kvcp_is_pow2(uint32_t n)
{
	return n && !(n & (n - 1));
}

/* Entries in a ring whose producer is at @prod and consumer at @cons: wrap-around safe. */
static inline uint32_t kvcp_ring_count(uint32_t prod, uint32_t cons)
{
	return prod - cons;
}

/* Copy one 64-byte entry word by word with relaxed atomic loads: the peer may be writing it,
 * and the copy is what gets validated and used (read once). */
static inline void kvcp_entry_read(void *dst, const void *src)
{
	const uint64_t *s = (const uint64_t *)src;
	uint64_t *d = (uint64_t *)dst;

	for (int i = 0; i < 8; i++)
		d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}

/* Is there room for the entry at @prod? Reloads the consumer index only when the cached copy
 * @*cons_cache says full. */
static inline int kvcp_ring_room(struct kvcp_ring *ring, uint32_t nentries, uint32_t prod,
				 uint32_t *cons_cache)
{
	if (kvcp_ring_count(prod, *cons_cache) < nentries)
		return 1;
	/* A2: pairs with R2 in kvcp_ring_take(): the consumer is done with the slots */
	*cons_cache = kvcp_load_acquire(&ring->cons);
	return kvcp_ring_count(prod, *cons_cache) < nentries;
}

/* Consumer side: copy the entry at @*cons into @entry (read once) and hand the slot back. */
static inline void kvcp_ring_take(struct kvcp_ring *ring, const void *entries, uint32_t nentries,
				  uint32_t *cons, void *entry)
{
	kvcp_entry_read(entry, (const char *)entries + (size_t)(*cons & (nentries - 1)) * 64);
	(*cons)++;
	/* R2: pairs with A2 in kvcp_ring_room(): slot read before cons moves */
	kvcp_store_release(&ring->cons, *cons);
}

/* Producer side, used by the side that owns @ring->prod and keeps its own copy @*prod and a
 * cached copy of the consumer index @*cons_cache. Returns 0 or -EAGAIN when full. */
static inline int kvcp_ring_push(struct kvcp_ring *ring, void *entries, uint32_t nentries,
				 uint32_t *prod, uint32_t *cons_cache, const void *entry)
{
	if (!kvcp_ring_room(ring, nentries, *prod, cons_cache))
		return -EAGAIN;
	memcpy((char *)entries + (size_t)(*prod & (nentries - 1)) * 64, entry, 64);
	(*prod)++;
	/* R1: pairs with A1 in kvcp_ring_pop(): the entry is written before prod moves */
	kvcp_store_release(&ring->prod, *prod);
	return 0;
}

/* Consumer side. @*cons is the consumer's own index. Pops one entry into @entry. Returns 1,
 * 0 when empty, or -EBADMSG when the producer's index is impossible (more than @nentries
 * ahead): the producer is corrupt or hostile. */
static inline int kvcp_ring_pop(struct kvcp_ring *ring, const void *entries, uint32_t nentries,
				uint32_t *cons, void *entry)
{
	/* A1: pairs with R1 in kvcp_ring_push(): entry contents visible once prod is */
	uint32_t prod = kvcp_load_acquire(&ring->prod);
	uint32_t n = kvcp_ring_count(prod, *cons);

	if (n == 0)
		return 0;
	if (n > nentries)
		return -EBADMSG;
	kvcp_ring_take(ring, entries, nentries, cons, entry);
	return 1;
}

/* ---- phase-tagged rings (KVCP_COMPAT_PHASE) -------------------------------------------------
 * The ring memory starts zeroed. The producer writes an entry's 32-bit word that holds its
 * phase bit last, with release order, the bit set on the ring's first lap, clear on the
 * second, and so on; the consumer reads that word with acquire order and finds the entry
 * there when the bit is what this lap expects. So the consumer's first look at the entry
 * tells it the entry is there: one cache line crosses cores where prod and the entry were
 * two. prod is still published after each entry (for the sleep/wake protocol and tools),
 * cons as before (the producer's room). NVMe's completion queues work this way. */

#define KVCP_SQE_PHASE_WORD 0	    /* byte offset of the word: opcode, flags, gpu */
#define KVCP_SQE_PHASE_BIT  0x8000u /* KVCP_SQE_F_PHASE in it (little-endian) */
#define KVCP_CQE_PHASE_WORD 12	    /* flags */
#define KVCP_CQE_PHASE_BIT  KVCP_CQE_F_PHASE

/* The phase bit the entry at index @i of a ring of @n (a power of two) entries carries. */
static inline int kvcp_phase(uint32_t i, uint32_t n)
{
	return !(i & n);
}

/* kvcp_ring_push, the entry's phase word (at byte @word, bit @bit) written last. */
static inline int kvcp_ring_push_phase(struct kvcp_ring *ring, void *entries, uint32_t nentries,
				       uint32_t *prod, uint32_t *cons_cache, const void *entry,
				       size_t word, uint32_t bit)
{
	char *slot = (char *)entries + (size_t)(*prod & (nentries - 1)) * 64;
	uint32_t w;

	if (!kvcp_ring_room(ring, nentries, *prod, cons_cache))
		return -EAGAIN;
	memcpy(&w, (const char *)entry + word, 4);
	w = kvcp_phase(*prod, nentries) ? w | bit : w & ~bit;
	memcpy(slot, entry, word);
	memcpy(slot + word + 4, (const char *)entry + word + 4, 64 - word - 4);
	/* R1: pairs with A1 in kvcp_ring_pop_phase(): the entry is whole once its phase is */
	kvcp_store_release((uint32_t *)(void *)(slot + word), w);
	(*prod)++;
	kvcp_store_release(&ring->prod, *prod);
	return 0;
}

/* Is the entry at the consumer's index @cons there? */
static inline int kvcp_ring_ready_phase(const void *entries, uint32_t nentries, uint32_t cons,
					size_t word, uint32_t bit)
{
	const char *slot = (const char *)entries + (size_t)(cons & (nentries - 1)) * 64;
	/* A1: pairs with R1 in kvcp_ring_push_phase() */
	uint32_t w = kvcp_load_acquire((const uint32_t *)(const void *)(slot + word));

	return !(w & bit) == !kvcp_phase(cons, nentries);
}

/* kvcp_ring_pop for a phase-tagged ring: 1 with the entry in @entry (its phase bit
 * cleared), or 0 when the next one is not there yet. */
static inline int kvcp_ring_pop_phase(struct kvcp_ring *ring, const void *entries,
				      uint32_t nentries, uint32_t *cons, void *entry, size_t word,
				      uint32_t bit)
{
	uint32_t w;

	if (!kvcp_ring_ready_phase(entries, nentries, *cons, word, bit))
		return 0;
	kvcp_ring_take(ring, entries, nentries, cons, entry);
	memcpy(&w, (char *)entry + word, 4);
	w &= ~bit;
	memcpy((char *)entry + word, &w, 4);
	return 1;
}

/* Entries waiting for the consumer whose index is @cons, or UINT32_MAX when impossible. */
static inline uint32_t kvcp_ring_pending(const struct kvcp_ring *ring, uint32_t nentries,
					 uint32_t cons)
{
	uint32_t n = kvcp_ring_count(kvcp_load_acquire(&ring->prod), cons);

	return n > nentries ? UINT32_MAX : n;
}

/* ---- validators ------------------------------------------------------------------------- */

/* Check a segment header read by a client. Returns 0, -EBADMSG when it is not a kvcd
 * segment at all, -EPROTO when it is one of another major version or with unknown
 * incompatible features, or -EINVAL when its geometry does not fit @size bytes. */
static inline int kvcp_hdr_validate(const struct kvcp_shm_hdr *h, uint64_t size)
{
	uint64_t sq_end, cq_end;

	if (size < sizeof(*h) || kvcp_load_acquire(&h->magic) != KVCP_MAGIC)
		return -EBADMSG;
	if (h->major != KVCP_MAJOR || (h->incompat & ~KVCP_INCOMPAT_KNOWN))
		return -EPROTO;
	if (h->hdr_size < sizeof(*h) || h->hdr_size > size)
		return -EINVAL;
	for (unsigned i = 0; i < sizeof(h->reserved) / sizeof(h->reserved[0]); i++)
		if (h->reserved[i])
			return -EINVAL;
	if (!kvcp_is_pow2(h->sq_entries) || !kvcp_is_pow2(h->cq_entries))
		return -EINVAL;
	if (h->sq_entries > (1u << 16) || h->cq_entries > (1u << 16))
		return -EINVAL;
	sq_end = h->sq_off + (uint64_t)h->sq_entries * sizeof(struct kvcp_sqe);
	cq_end = h->cq_off + (uint64_t)h->cq_entries * sizeof(struct kvcp_cqe);
	if (h->sq_off < h->hdr_size || sq_end > size || h->cq_off < sq_end || cq_end > size)
		return -EINVAL;
	if (h->sq_off % 64 || h->cq_off % 64 || h->scratch_off % 64)
		return -EINVAL;
	if (h->scratch_off < cq_end || h->scratch_off + h->scratch_size > size)
		return -EINVAL;
	if (h->ctrl_size != size)
		return -EINVAL;
	return 0;
}

/* Is [off, off + len) inside a region of @size bytes? Overflow-safe. */
static inline int kvcp_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

/* ---- ABI pins --------------------------------------------------------------------------- */

static_assert(sizeof(struct kvcp_sqe) == 64, "sqe is 64 bytes");
static_assert(sizeof(struct kvcp_cqe) == 64, "cqe is 64 bytes");
static_assert(sizeof(struct kvcp_key) == 16, "key is 128 bits");
static_assert(sizeof(struct kvcp_layout) == 16, "layout is 16 bytes");
static_assert(offsetof(struct kvcp_sqe, key) == 16, "sqe.key");
static_assert(offsetof(struct kvcp_sqe, off) == 32, "sqe.off");
static_assert(offsetof(struct kvcp_sqe, layout) == 48, "sqe.layout");
static_assert(offsetof(struct kvcp_cqe, res) == 8, "cqe.res");
static_assert(offsetof(struct kvcp_cqe, layout) == 24, "cqe.layout");
static_assert(offsetof(struct kvcp_sqe, flags) == KVCP_SQE_PHASE_WORD + 1 &&
		      KVCP_SQE_PHASE_BIT == KVCP_SQE_F_PHASE << 8,
	      "sqe phase bit: flags, the word's second byte");
static_assert(offsetof(struct kvcp_cqe, flags) == KVCP_CQE_PHASE_WORD, "cqe phase word");
static_assert(sizeof(struct kvcp_ring) == 3 * KVCP_CACHELINE, "ring is 3 lines");
static_assert(offsetof(struct kvcp_ring, cons) == KVCP_CACHELINE, "cons on its own line");
static_assert(offsetof(struct kvcp_ring, flags) == 2 * KVCP_CACHELINE, "flags on its own line");
static_assert(offsetof(struct kvcp_ring, hint) == 2 * KVCP_CACHELINE + 8, "hint beside flags");
static_assert(offsetof(struct kvcp_shm_hdr, sq) == 4 * KVCP_CACHELINE, "sq at 256");
static_assert(sizeof(struct kvcp_shm_hdr) == 10 * KVCP_CACHELINE, "header is 640 bytes");
static_assert(sizeof(struct kvcp_attach_req) == 248, "attach request size");
static_assert(sizeof(struct kvcp_attach_rep) == 64, "attach reply size");
static_assert(sizeof(struct kvcp_attach_gpu) == 8 + 16 * 32, "attach GPU message size");
static_assert(sizeof(struct kvcp_list_ent) == 56, "list entry size");
static_assert(sizeof(struct kvcp_client_ent) == 104, "client entry size");
static_assert(sizeof(struct kvcp_ns_stats) == 192, "namespace stats size");
static_assert(sizeof(struct kvcp_recompress) == 48, "recompress request size");
static_assert(sizeof(struct kvcp_calibrate) == 24, "calibrate request size");
static_assert(sizeof(struct kvcp_gpu_pool) == 64, "GPU pool stats size");
static_assert(KVCP_OP__COUNT <= KVCP_OP_STATS_N + KVCP_OP_MORE, "every op has its stats");

#endif /* KVCP_H */
