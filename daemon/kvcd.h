/* kvcd.h - the daemon's internal interfaces, one section per subsystem.
 *
 * Ownership in one paragraph: main.c owns the config, the topology, the pools, the store and
 * every session; sessions are created and destroyed only by the main thread. A worker drains
 * the rings of the sessions assigned to it and touches a session only between the main
 * thread's hand-over and the worker's acknowledgement of its removal (worker.c). The store is
 * shared by all workers under one mutex that is never held while bytes are copied.
 */
#ifndef KVCD_H
#define KVCD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../proto/kvcp.h"
#include "codec/codec.h"
#include "codec/gpujob.h"
#include "gpu/rt.h"

#define KVCD_MAX_NODES KVCP_MAX_NODES
#define KVCD_MAX_NS    32
#define KVCD_MAX_IDS   32

/* ---- config.c ------------------------------------------------------------------------------ */

struct kvcd_ns_acl {
	char name[KVCP_NS_MAX];
	uint32_t uids[KVCD_MAX_IDS], gids[KVCD_MAX_IDS];
	unsigned nuids, ngids;
	bool has_policy;
	struct kvcd_policy policy; /* [namespace NAME] policy = ... */
	uint64_t quota;		   /* pool bytes the namespace may hold; 0: no quota */
	int remote;		   /* KVCD_REMOTE_*; -1: the [remote] default */
};

enum {
	KVCD_REMOTE_OFF,
	KVCD_REMOTE_EVICTED, /* what kvcd evicts goes to the cluster */
	KVCD_REMOTE_ALL	     /* every block it stores, too */
};

enum {
	KVCD_HUGE_NEVER,
	KVCD_HUGE_TRY,
	KVCD_HUGE_REQUIRE
};

#define KVCD_MAX_GPUS 16

struct kvcd_config {
	char socket[108];
	char socket_group[64];
	unsigned socket_mode;
	uint64_t pool_size; /* per NUMA node */
	unsigned workers;
	uint64_t staging_default, staging_max;
	unsigned sq_entries, cq_entries;
	uint32_t scratch_size;
	int hugepages; /* KVCD_HUGE_* */
	/* memlock = require (default): pools that cannot be locked in RAM stop kvcd, saying what
	 * to raise; try: kvcd says so and goes on with them unlocked (sandboxed kernels) */
	bool memlock_try;
	bool checksum;
	unsigned high_wm, low_wm; /* percent of a pool */
	uint32_t lease_max_ms;
	unsigned busy_poll_us;
	unsigned max_clients;
	unsigned max_pending;		   /* connections that have not finished attaching */
	unsigned max_pending_per_uid;	   /* of them, from one uid */
	unsigned handshake_ms;		   /* a connection that says nothing this long is dropped */
	unsigned max_pins;		   /* pins one client may hold */
	unsigned max_lookup_keys;	   /* keys in one LOOKUP */
	uint32_t admin_uids[KVCD_MAX_IDS]; /* besides root and kvcd's own uid */
	unsigned nadmin;
	char state_dir[108];	 /* pools kept here as files, for warm restarts; "": memfds */
	char metrics_listen[64]; /* [metrics] listen = HOST:PORT; "": off */
	/* [remote]: a Redis Cluster (or one Redis) under the pools; remote_redis "": none */
	char remote_redis[512];
	char remote_user[64], remote_password[128];
	unsigned remote_connect_ms, remote_op_ms, remote_ttl;
	uint64_t remote_queue;	   /* bytes of puts waiting; beyond, dropped */
	bool remote_read_replicas; /* GETs go to a replica of the slot (READONLY) */
	/* [gpu] devices: which CUDA devices kvcd looks for (ordinals); gpu_all: every one */
	bool gpu_all;
	unsigned gpu_ndev;
	int gpu_dev[KVCD_MAX_GPUS];
	/* [gpu] staging_size, staging_max: the GPU staging a client that asks for GPU access
	 * gets on each device, by default and at most */
	uint64_t gpu_staging_default, gpu_staging_max;
	/* [gpu] pool_size: device memory kvcd keeps copies of blocks in, on each device; 0: none
	 * (engines size their own use of GPU memory, and kvcd takes none unless told) */
	uint64_t gpu_pool_size;
	int log_level;	/* LOG_ERR .. LOG_DEBUG */
	bool strict_ns; /* refuse namespaces the config does not list */
	bool foreground;
	struct kvcd_policy policy; /* [kvcd] policy: namespaces without their own */
	struct kvcd_ns_acl ns[KVCD_MAX_NS];
	unsigned nns;
};

void kvcd_config_defaults(struct kvcd_config *c);
/* Parse INI @path into @c. Returns 0 or -errno; messages go to stderr with file:line. */
int kvcd_config_load(struct kvcd_config *c, const char *path);
/* [gpu] devices = all | none | 0,2: into c->gpu_all, gpu_dev. Returns 0 or -EINVAL. */
int kvcd_parse_gpus(struct kvcd_config *c, const char *v);
/* "256M", "1G", "4096", "2MiB" -> bytes. Returns 0 or -EINVAL. */
int kvcd_parse_size(const char *s, uint64_t *out);
/* The ACL for @ns, or NULL when the namespace is not configured. */
const struct kvcd_ns_acl *kvcd_config_ns(const struct kvcd_config *c, const char *ns);
/* The policy namespace @ns starts with. */
const struct kvcd_policy *kvcd_config_policy(const struct kvcd_config *c, const char *ns);
/* May a peer with @uid, primary @gid and supplementary @groups[0..@ngroups) use namespace
 * @ns? */
bool kvcd_config_allows(const struct kvcd_config *c, const char *ns, uid_t uid, gid_t gid,
			const gid_t *groups, unsigned ngroups);
/* Check values against each other (after the file and the command line). Returns 0 or
 * -EINVAL with the reason on stderr. */
int kvcd_config_check(const struct kvcd_config *c);
/* Is @uid an administrator: root, kvcd's own uid, or listed in admin_uids? */
bool kvcd_config_admin(const struct kvcd_config *c, uid_t uid, uid_t euid);

/* ---- log.c: the journal under systemd, stderr in the foreground, syslog when detached ---- */

#include <syslog.h> /* LOG_ERR ... LOG_DEBUG */

void kvcd_log_init(bool detached);
void kvcd_log_level(int prio);
/* "err", "warning", "notice", "info", "debug" ... -> LOG_*, or -1. */
int kvcd_log_parse_level(const char *s);
/* One message (no trailing newline) at @prio. */
void kvcd_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
struct kvcd_session;
/* The same about a client: its id, pid, uid and namespace become structured journal fields. */
void kvcd_log_client(int prio, const struct kvcd_session *s, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* ---- os_linux.c: every raw syscall the daemon makes on memory goes through this table, so
 * tests can inject failures (SQLite's VFS syscall table). -------------------------------------- */

struct kvcd_os {
	void *(*mmap)(void *addr, size_t len, int prot, int flags, int fd, off_t off);
	int (*munmap)(void *addr, size_t len);
	int (*mlock)(const void *addr, size_t len);
	int (*madvise)(void *addr, size_t len, int advice);
	long (*mbind)(void *addr, unsigned long len, int mode, const unsigned long *nodemask,
		      unsigned long maxnode, unsigned flags);
	int (*memfd_create)(const char *name, unsigned flags);
	int (*ftruncate)(int fd, off_t len);
	int (*fallocate)(int fd, int mode, off_t off, off_t len);
};

extern struct kvcd_os kvcd_os;

int kvcd_pidfd_open(pid_t pid);
/* mbind [@addr, @addr + @len) to OS node @node alone with @mode (MPOL_BIND, MPOL_PREFERRED),
 * through kvcd_os.mbind. Returns 0, or -1 with errno. */
int kvcd_mbind_node(void *addr, size_t len, int mode, int node);
/* futex_waitv on up to 128 words; @abs_ns is an absolute CLOCK_MONOTONIC deadline. */
struct futex_waitv;
int kvcd_futex_waitv(struct futex_waitv *w, unsigned n, uint64_t abs_ns);
int kvcd_futex_wake(uint32_t *uaddr, int n, bool shared);
/* FUTEX_WAIT on one private word for at most @rel_ns. */
int kvcd_futex_wait(uint32_t *uaddr, uint32_t val, uint64_t rel_ns);

/* A job another thread does for a session (a remote get, a CALIBRATE): *@done is 0 while it
 * runs, 1 once the thread hands it back, 2 once its session went away first. The thread
 * calls kvcd_job_deliver: true when handed back (then it bumps and wakes @wake, when not
 * NULL, and must not touch the job again: its worker may free it at once); false when
 * orphaned (the thread frees it). The session's teardown calls kvcd_job_orphan: true when the
 * thread will free it; false when it was done already (the caller frees it). */
static inline bool kvcd_job_deliver(int *done, uint32_t *wake)
{
	int running = 0;

	if (!__atomic_compare_exchange_n(done, &running, 1, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return false;
	if (wake) {
		__atomic_fetch_add(wake, 1, __ATOMIC_RELEASE);
		kvcd_futex_wake(wake, 1, false);
	}
	return true;
}

static inline bool kvcd_job_orphan(int *done)
{
	int running = 0;

	return __atomic_compare_exchange_n(done, &running, 2, false, __ATOMIC_ACQ_REL,
					   __ATOMIC_ACQUIRE);
}
bool kvcd_has_cap_ipc_lock(void);
uint64_t kvcd_now_ns(void);

/* ---- topo.c: NUMA topology and the placement decision -------------------------------------- */

struct kvcd_topo {
	unsigned nnodes;
	int os_index[KVCD_MAX_NODES];
	uint64_t cpus[KVCD_MAX_NODES][16];	       /* CPU mask of each node, 1024 CPUs */
	uint64_t dist[KVCD_MAX_NODES][KVCD_MAX_NODES]; /* relative latency; 0 = unknown */
	uint8_t ancestor_depth[KVCD_MAX_NODES][KVCD_MAX_NODES]; /* deeper = closer */
};

/* Load the machine's topology, or the one in @spec: an hwloc synthetic description
 * ("pack:2 [numa] core:2 pu:1") or a path to an hwloc XML export. NULL: the real machine
 * (HWLOC_XMLFILE and HWLOC_SYNTHETIC are honoured by hwloc). Returns 0 or -errno. */
int kvcd_topo_load(struct kvcd_topo *t, const char *spec);

/* Order the nodes for a client: @hint (OS node id, -1 none) first when it exists, else the
 * node with most of the client's @cpus, then the rest nearest first (distance matrix, else
 * topology tree). Writes topo indices (not OS ids) to @order; returns the count. Pure. */
unsigned kvcd_topo_order(const struct kvcd_topo *t, const uint64_t cpus[16], int hint,
			 uint8_t order[KVCD_MAX_NODES]);

/* ---- alloc.c: TLSF, O(1) allocation inside one pool ----------------------------------------- */

#define KVCD_ALLOC_SL_LOG2 4
#define KVCD_ALLOC_FL_MAX  48

struct kvcd_alloc {
	char *base;
	size_t size;
	size_t used; /* payload + header bytes of allocated blocks */
	uint64_t fl_bitmap;
	uint32_t sl_bitmap[KVCD_ALLOC_FL_MAX];
	struct kvcd_fblk *heads[KVCD_ALLOC_FL_MAX][1 << KVCD_ALLOC_SL_LOG2];
};

#define KVCD_ALLOC_ALIGN    64u
#define KVCD_ALLOC_OVERHEAD 64u /* in-band header per allocation */

/* Manage [base, base + size). Returns 0 or -EINVAL when the region is too small. */
int kvcd_alloc_init(struct kvcd_alloc *a, void *base, size_t size);
/* A 64-byte aligned region of at least @n bytes, or NULL. O(1). */
void *kvcd_alloc(struct kvcd_alloc *a, size_t n);
void kvcd_free(struct kvcd_alloc *a, void *p);
/* Bytes the pool charges for @p (header included). */
size_t kvcd_alloc_charge(const void *p);
/* Largest request that would succeed right now. */
size_t kvcd_alloc_largest(const struct kvcd_alloc *a);
/* The KVCD_ALLOC_TAG_BYTES of @p's header its owner may use while @p is allocated (the
 * store keeps its block record there). */
#define KVCD_ALLOC_TAG_BYTES 48u
void *kvcd_alloc_tag(void *p);
/* Would freeing allocated block @p, with its neighbours that are free or that @gone says
 * will be freed too, make room for a request of @n bytes? Walks @p's run only. */
bool kvcd_alloc_frees_room(const struct kvcd_alloc *a, void *p, size_t n,
			   bool (*gone)(void *payload, void *arg), void *arg);
/* Take over the blocks an earlier kvcd_alloc left in [base, base + size): the chain of
 * block sizes must be intact (-EBADMSG, nothing written, when it is not); allocated blocks
 * that @keep keeps stay allocated, the rest is freed. Returns 0, -EINVAL or -EBADMSG. */
int kvcd_alloc_adopt(struct kvcd_alloc *a, void *base, size_t size,
		     bool (*keep)(void *payload, void *arg), void *arg);
/* Walk every block and check the invariants (test aid). Returns 0 or -EFAULT. */
int kvcd_alloc_check(const struct kvcd_alloc *a);

/* ---- pool.c: one pinned, NUMA-bound memory pool per node (a memory domain) -------------------
 * A pool is a shared file (a memfd, or a file in the state directory) so that it can outlive
 * kvcd: its first KVCD_SB_BYTES hold a superblock, the rest is the allocator's arena, whose
 * blocks describe themselves (store.c's tags). A restarted kvcd that is handed the same file
 * rebuilds its index from it (kvcd_store_adopt). */

enum kvcd_domain_kind {
	KVCD_DOMAIN_HOST = 0,
	KVCD_DOMAIN_GPU = 1
};

#define KVCD_SB_BYTES	(32u << 10)
#define KVCD_SB_VERSION 1 /* the superblock's and the block tags' format */
#define KVCD_SB_MAGIC	"KVCDPOOL"

struct kvcd_sb {
	char magic[8]; /* KVCD_SB_MAGIC */
	uint32_t version;
	uint32_t sb_bytes;
	uint64_t size; /* of the whole pool */
	int32_t node;
	uint32_t index;
	uint64_t sum; /* XXH3 of the superblock with this field 0 */
	uint8_t reserved[24];
	char ns[256][KVCP_NS_MAX]; /* namespace names by id ("": unused), as the tags name them */
};
_Static_assert(sizeof(struct kvcd_sb) <= KVCD_SB_BYTES, "superblock size");

struct kvcd_pool {
	enum kvcd_domain_kind kind;
	int node; /* OS NUMA node id (host) or device ordinal (GPU) */
	unsigned index;
	void *base;
	size_t size;
	bool huge;
	int fd;	   /* the pool's file: kept for the service manager's store */
	bool warm; /* opened with an intact superblock: to be adopted, else formatted */
	struct kvcd_alloc alloc;
	uint32_t hand; /* CLOCK hand over this pool's blocks (record id;
					 * 0: none) */
	uint64_t blocks;
	uint64_t pinned; /* blocks with pins */
};

/* Map the pool's file, bind it to @node (when @bind), lock and prefault @size bytes (with
 * @lock_try, a lock refused is said and the pages only prefaulted). The file
 * is @fd when >= 0 (handed back by the service manager), else @path when given (created or
 * reused), else a new memfd. p->warm says whether it holds an intact superblock of this
 * format for this size: then kvcd_store_adopt() takes its blocks, else kvcd_pool_format()
 * empties it. Errors are printed with what to change. Returns 0 or -errno. */
int kvcd_pool_open(struct kvcd_pool *p, unsigned index, int node, size_t size, int hugepages,
		   bool bind, bool lock_try, int fd, const char *path);
/* An empty pool on a new memfd: kvcd_pool_open() + kvcd_pool_format(). */
int kvcd_pool_create(struct kvcd_pool *p, int node, size_t size, int hugepages, bool bind);
void kvcd_pool_format(struct kvcd_pool *p);
/* Record namespace names (by id) in the superblock. */
void kvcd_pool_set_names(struct kvcd_pool *p, const char (*names)[KVCP_NS_MAX], unsigned n);
void kvcd_pool_destroy(struct kvcd_pool *p);

/* ---- sum.c: the block checksum ---------------------------------------------------------------- */

/* Copy @n bytes from @src to @dst (NULL: only read @src) and return their checksum
 * (Fletcher-4 over 8 lanes, finished by XXH3; sum.c). Each source byte is read once. The
 * same value whatever @isa; @isa above what the CPU has is lowered. */
uint64_t kvcd_copy_sum(enum kvcd_isa isa, void *dst, const void *src, size_t n);

/* ---- store.c: index, blocks, eviction, pins ---------------------------------------------- */

#define KVCD_BLK_WRITING \
	1u		   /* being filled: invisible to lookups (the slot's state says
				 * so too; this copy spares CLOCK a read of the slot) */
#define KVCD_BLK_DEAD	2u /* removed from the index; freed when refs drops to 0 */
#define KVCD_BLK_REF	4u /* CLOCK reference bit */
#define KVCD_BLK_VICTIM 8u /* chosen for eviction by a STORE that may yet give up */

/* A block's entry in the index, which holds all a lookup reads: a LOOKUP at a million
 * blocks costs this one cache miss, not also its record's. 24 bytes, open addressing with
 * linear probing (store.c). */
struct kvcd_slot {
	struct kvcp_key key;
	uint32_t rec; /* record id (struct kvcd_block) */
	uint16_t ns;
	uint8_t state; /* KVCD_SLOT_* */
	uint8_t pad;
};
_Static_assert(sizeof(struct kvcd_slot) == 24, "index slot size");

#define KVCD_SLOT_EMPTY	  0
#define KVCD_SLOT_LIVE	  1
#define KVCD_SLOT_WRITING 2 /* reserved, not committed: not found by lookups */

/* A block's record: 64 bytes, one cache line, in 2 MiB slabs (store.c). Records never move,
 * so workers hold pointers; the index and the CLOCK rings name them by 32-bit id. */
struct kvcd_block {
	void *data;
	uint64_t checksum;
	uint64_t stored; /* bytes held in the pool (after the codec) */
	struct kvcp_layout layout;
	uint32_t slot;	       /* its entry in the index, while in it */
	uint32_t cprev, cnext; /* CLOCK ring of its pool; cnext: free list */
	uint32_t hits;
	uint32_t refs; /* copies in flight */
	uint16_t pins;
	uint8_t flags; /* KVCD_BLK_*, under the store lock */
	uint8_t pool : 6;
	uint8_t has_sum : 1; /* checksum valid; fixed at commit */
	uint8_t summary : 1; /* a SELECT summary of its keys at data +
						 * KVCD_SUMMARY_AT(stored) (codec.h); set
						 * before commit */
};
_Static_assert(sizeof(struct kvcd_block) == 64, "block record size");
_Static_assert(KVCD_MAX_NODES <= 64, "a pool index fits its 6 bits");

/* What eviction knows of a block beyond its record (which is full): its place in a chain,
 * from a STORE that named its parent, and how often it was read. Under the store lock. */
struct kvcd_chain {
	uint32_t parent;	  /* record id + 1 of the block before it in its chain; 0: none;
				  * UINT32_MAX: it was not cached when this one was stored */
	uint32_t parent_gen : 12; /* that record's gen when linked: another value means it is
				   * gone (12 bits: a record reused 4096 times under a live link
				   * would be missed, costing an eviction choice, nothing else) */
	uint32_t gen : 12;	  /* bumped each time this record's block is removed */
	uint32_t children : 6;	  /* blocks linked to it, still in the index; stuck at 63 */
	uint32_t freq : 2;	  /* reads beyond the first, up to 3: second chances */
};
_Static_assert(sizeof(struct kvcd_chain) == 8, "chain record size");
#define KVCD_CHAIN_CHILDREN_MAX 63

/* Who holds pins: a session. Under the store lock. */
struct kvcd_pin_owner {
	uint32_t id;	/* session id */
	uint32_t count; /* pins held */
	uint32_t head;	/* first of its pins + 1; 0: none */
};

/* A pin: a lease on block record @rec. Pins sit in one dense array, chained by (rec, owner)
 * hash and listed per owner, so pinning, unpinning and dropping a client's pins cost neither
 * a malloc nor a walk of everyone's pins (store.c). */
struct kvcd_pin {
	uint32_t rec;
	uint32_t hnext; /* next pin of its hash chain + 1; 0: end */
	uint64_t deadline_ns;
	struct kvcd_pin_owner *owner;
	uint32_t onext, oprev; /* the owner's list, index + 1 */
};

#define KVCD_STORE_NS 256 /* namespace ids: a block record keeps one in 8 bits */

struct kvcd_store {
	pthread_mutex_t lock;
	struct kvcd_pool *pools;
	unsigned npools;
	struct kvcd_slot *slots; /* the index: nslots, a power of two */
	size_t nslots, count;
	uint64_t seed;		    /* of the slot hash: keys are the client's */
	bool growing;		    /* a STORE is making a larger slot array */
	uint32_t free_recs;	    /* block records not in use (id; 0: none) */
	void **slabs;		    /* 2 MiB each, record id >> 15 */
	struct kvcd_chain **chains; /* beside each slab: its records' chain links */
	size_t nslabs;
	struct kvcd_pin *pins; /* npins in use of cap_pins */
	uint32_t *pin_heads;   /* hash chains (index + 1), npin_heads a power of two */
	size_t cap_pins, npin_heads;
	uint64_t pin_next_deadline; /* no lease ends before this */
	uint64_t *picked;	    /* victims and REF bits cleared by one STORE's sweep */
	size_t npicked, cap_picked;
	unsigned high_wm, low_wm;
	struct kvcd_store_ns {
		char name[KVCP_NS_MAX];	   /* "": a free entry */
		struct kvcd_policy policy; /* applied to STOREs with layout.codec 0 */
		uint64_t blocks, bytes_in, bytes_stored, fallbacks;
		uint64_t quota;	  /* pool bytes it may hold; 0: none */
		uint64_t charged; /* pool bytes it holds, unfinished STOREs included */
		uint64_t pinned;  /* of them, in blocks with pins */
		uint64_t hits, misses, evictions;
		uint32_t attached; /* sessions (references): reclaimed when 0 and empty */
		int remote;	   /* KVCD_REMOTE_* */
	} ns[KVCD_STORE_NS];	   /* namespace id -> namespace */
	unsigned nns;		   /* ids below this may be in use */
	void (*ns_changed)(struct kvcd_store *s, unsigned id, void *arg); /* names, for
									    * restarts */
	/* a block about to be evicted from a namespace with remote >= EVICTED (store lock
	 * held): the remote tier copies it */
	void (*evicting)(struct kvcd_store *s, const struct kvcd_block *b, uint16_t ns, void *arg);
	void *evicting_arg;
	/* the bytes of block record @rec are freed, or replaced by a rewrite (store lock held):
	 * the GPU pools drop their copies of them */
	void (*forget)(struct kvcd_store *s, uint32_t rec, void *arg);
	void *forget_arg;
	void *ns_arg;
	/* counters, under lock */
	uint64_t hits, misses, evictions, bytes_in, bytes_stored, npins, checksum_failures;
};

int kvcd_store_init(struct kvcd_store *s, struct kvcd_pool *pools, unsigned npools,
		    unsigned high_wm, unsigned low_wm);
void kvcd_store_fini(struct kvcd_store *s);
/* Take a reference on namespace @name, creating it with policy @init, @quota (bytes, 0: none)
 * and @remote (KVCD_REMOTE_*: whether it spills to the remote tier). Returns its id, or
 * -ENFILE when the table is full. */
int kvcd_store_ns_get(struct kvcd_store *s, const char *name, const struct kvcd_policy *init,
		      uint64_t quota, int remote);
/* Drop a reference; a namespace with no reference and no block is forgotten. */
void kvcd_store_ns_put(struct kvcd_store *s, uint16_t ns);
/* One more hold on namespace @ns, which is held already (released by kvcd_store_ns_put). */
void kvcd_store_ns_hold(struct kvcd_store *s, uint16_t ns);
/* Read or replace namespace @ns's policy. */
void kvcd_store_policy(struct kvcd_store *s, uint16_t ns, struct kvcd_policy *out);
void kvcd_store_set_policy(struct kvcd_store *s, uint16_t ns, const struct kvcd_policy *p);
/* Count a STORE the namespace policy could not encode (kept raw). */
void kvcd_store_fallback(struct kvcd_store *s, uint16_t ns);

/* Reserve room for a block of @stored bytes on the first pool of @order that has it, evicting
 * when none does; a namespace over its quota evicts its own blocks, and never another's that
 * is within its quota. The block is invisible until kvcd_store_commit(). Returns 0, -EEXIST,
 * -ENOSPC (not even evicting would make room), -EDQUOT (nor within the quota) or -ENOMEM; on
 * error nothing was evicted. */
int kvcd_store_reserve(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		       const struct kvcp_layout *layout, uint64_t stored, const uint8_t *order,
		       unsigned norder, struct kvcd_block **out);
/* Link reserved block @b to its parent @parent of namespace @ns, when that is in the index:
 * eviction then takes chains from their tails, and @b first once the parent is gone. */
void kvcd_store_link(struct kvcd_store *s, uint16_t ns, struct kvcd_block *b,
		     const struct kvcp_key *parent);
/* Publish (@ok) or drop a reserved block; @has_sum says whether @checksum is valid. */
void kvcd_store_commit(struct kvcd_store *s, struct kvcd_block *b, bool ok, bool has_sum,
		       uint64_t checksum);
/* Rewriting committed block @b (referenced by the caller, and by nobody else) in a new form
 * (RECOMPRESS): _begin reserves @stored bytes for it, evicting others when needed (never @b),
 * at rw->data; the caller writes them (and may lower rw->stored to the bytes its checksum
 * covers, as kvcd_block.stored); _end publishes them as @b's (@ok) and frees the old bytes,
 * or drops them. Both return -EBUSY, the block unchanged, when someone else reads @b, it is
 * pinned or it was removed; _begin also -ENOSPC or -EDQUOT as kvcd_store_reserve. */
struct kvcd_rewrite {
	void *data;
	uint64_t stored;
	unsigned pool;
	uint8_t codec;
};
int kvcd_store_rewrite_begin(struct kvcd_store *s, struct kvcd_block *b, uint64_t stored,
			     uint8_t codec, const uint8_t *order, unsigned norder,
			     struct kvcd_rewrite *rw);
int kvcd_store_rewrite_end(struct kvcd_store *s, struct kvcd_block *b,
			   const struct kvcd_rewrite *rw, bool ok, bool has_sum, uint64_t checksum,
			   bool summary);
/* Find a live block and take a reference. Returns 0 or -ENOENT. */
/* SELECT: a reference on each of @keys[0..n) that is committed, in @out[i] (NULL when not),
 * with no hit counted and no CLOCK bit set; keys are copied once. Release with
 * kvcd_store_put_many(). */
void kvcd_store_ref_many(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys, size_t n,
			 struct kvcd_block **out);
void kvcd_store_put_many(struct kvcd_store *s, struct kvcd_block **b, size_t n);
int kvcd_store_get(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		   struct kvcd_block **out);
/* Drop a reference; @corrupt also removes the block from the index. */
void kvcd_store_put(struct kvcd_store *s, struct kvcd_block *b, bool corrupt);
/* Length of the longest prefix of @keys that is cached. The lock is taken per slice of
 * keys, so a long LOOKUP does not hold other workers up. */
size_t kvcd_store_lookup(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *keys, size_t n);
int kvcd_store_delete(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key);
/* Pin a block for @o until @deadline_ns; @o holds at most @max pins (-EDQUOT beyond). */
int kvcd_store_pin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		   struct kvcd_pin_owner *o, uint64_t deadline_ns, unsigned max);
int kvcd_store_unpin(struct kvcd_store *s, uint16_t ns, const struct kvcp_key *key,
		     struct kvcd_pin_owner *o);
/* Drop every pin @o holds (@o non-NULL), or the pins whose lease ended by @now_ns. Returns
 * the number dropped. */
unsigned kvcd_store_release_pins(struct kvcd_store *s, uint64_t now_ns, struct kvcd_pin_owner *o);
/* Evict until every pool is under its low watermark, if it is over its high one; with
 * @target_free, until that many bytes are free (UINT64_MAX: everything unpinned). Returns the
 * number of blocks evicted. */
uint64_t kvcd_store_reclaim(struct kvcd_store *s, uint64_t target_free);
/* What a restart found in a pool. */
struct kvcd_adopt_stats {
	uint64_t seen;	      /* allocated blocks */
	uint64_t kept, bytes; /* back in the index */
	uint64_t uncommitted; /* a STORE the previous kvcd never finished, or a dead block */
	uint64_t bad_tag;     /* a record that does not check out, or a key seen twice */
	uint64_t bad_sum;     /* bytes that no longer match their checksum */
};

/* Rebuild the index from pool @pool, which a previous kvcd filled (p->warm): every committed
 * block whose record and (with @verify) checksum check out is kept under namespace
 * @ns_map[its recorded id] (-1: dropped); everything else is freed. Start-up only. Returns 0,
 * or -EBADMSG when the pool's chain of blocks is broken (nothing written: format it). */
int kvcd_store_adopt(struct kvcd_store *s, unsigned pool, const int ns_map[256], bool verify,
		     struct kvcd_adopt_stats *st);
/* Fill the store's part of @st, listing the namespaces @show (NULL: all) shows; the id of
 * st->ns[i] in @ids[i] (KVCP_MAX_NS_STATS of them). */
void kvcd_store_stats(struct kvcd_store *s, struct kvcp_stats *st, uint16_t *ids,
		      bool (*show)(const char *name, void *arg), void *arg);
/* Up to @max blocks of @ns from position @start on, in index order. */
unsigned kvcd_store_list(struct kvcd_store *s, uint16_t ns, uint32_t start,
			 struct kvcp_list_ent *out, unsigned max);

/* The position of @b's first token in its sequence, from the chain its STOREs named: 0 when
 * it was stored without a parent, else its parent's plus the parent's tokens. -ENOENT when a
 * block of the chain is gone (or was not cached when the next one was stored). */
int kvcd_store_chain_pos(struct kvcd_store *s, const struct kvcd_block *b, uint64_t *pos);
/* @b's record id: what names it until its bytes are freed (kvcd_store.forget). */
uint32_t kvcd_store_rec(const struct kvcd_block *b);
/* Take one more reference on @b, which the caller holds already (or is writing). */
void kvcd_store_hold(struct kvcd_store *s, struct kvcd_block *b);
/* Start-up: @fn(@arg, its namespace, its key, it) for every committed block whose key.hi is
 * @hi, under the store lock (@fn must not call the store); each one @fn returns true for is
 * referenced for the caller. Returns how many. */
unsigned kvcd_store_hold_hi(struct kvcd_store *s, uint64_t hi,
			    bool (*fn)(void *arg, uint16_t ns, const struct kvcp_key *k,
				       struct kvcd_block *b),
			    void *arg);

/* ---- basis.c: the learned bases of learned= policies, pool blocks of their namespace ------- */

#define KVCD_BASES_MAX	   8  /* per namespace: older ones are dropped */
#define KVCD_BASES_DROPPED 64 /* start-up: surplus bases found in the pools, let go */

struct kvcd_bases {
	pthread_mutex_t lock;	     /* before the store's lock, never after */
	pthread_mutex_t calibrating; /* held through a CALIBRATE: one at a time */
	struct kvcd_basis_slot {
		struct kvcd_block *b; /* referenced by the table; NULL: free */
		uint32_t version;
	} at[KVCD_STORE_NS][KVCD_BASES_MAX];
	struct kvcd_block *dropped[KVCD_BASES_DROPPED]; /* start-up only */
	unsigned ndropped;
	unsigned running; /* CALIBRATE threads not yet finished (atomic) */
};

struct kvcd;
struct kvcd_session;
/* Is @k a basis's key (which clients may not store, fetch, delete or pin)? */
bool kvcd_basis_key(const struct kvcp_key *k);
/* After the pools are adopted, before the workers: hold the bases found in them. */
int kvcd_bases_init(struct kvcd *d);
void kvcd_bases_fini(struct kvcd *d);
/* Basis @version of namespace @ns (0: its newest), referenced (kvcd_store_put). Returns 0 or
 * -ENOKEY. */
int kvcd_basis_get(struct kvcd *d, uint16_t ns, uint32_t version, struct kvcd_block **out);
/* STATS: the bases of the namespaces st->ns lists, whose ids are @ids. */
void kvcd_bases_stats(struct kvcd *d, const uint16_t *ids, struct kvcp_stats *st);
/* A CALIBRATE, learned on a thread of its own (seconds for a large model) while the worker
 * serves its other sessions. @done: 0 while it runs, 1 when @res and @bytes are the result
 * (the worker takes it, is woken through @wake), 2 when its session went away first (the
 * thread frees it). */
struct kvcd_cal_job {
	struct kvcd *d;
	uint16_t ns_id;
	uint32_t arg;
	uint8_t order[KVCD_MAX_NODES];
	unsigned norder;
	char ns[KVCP_NS_MAX];
	uint32_t *wake;
	int done;
	int res; /* the new basis's version, or -errno */
	uint64_t bytes;
	float *weight;	  /* the request's [layers][2] weights (after the job), or NULL */
	uint32_t wlayers; /* their layers */
	uint32_t rope;	  /* the request's RoPE base, 0: none */
};
/* CALIBRATE for session @s (its namespace), @arg as KVCP_CALIBRATE_ARG, @req: @len bytes of
 * struct kvcp_calibrate and its weights (len 0: none): -EINPROGRESS with the job in *@out, or
 * at once -EINVAL (checked first, for any client: no energy, a bad description, a weight
 * not above 0), -EPERM, -ENOMEM, -EAGAIN. The job ends with the new basis's version and its
 * size, or -ENOENT (no raw block), -EINVAL (weights for other layers), -ENOSYS (no LAPACKE),
 * -ENOSPC, -EDQUOT, -ENOMEM. */
int kvcd_calibrate(struct kvcd *d, struct kvcd_session *s, uint32_t arg, const char *req,
		   uint64_t len, struct kvcd_cal_job **out);
/* The job's session goes: its thread frees it when done (or now, when it is). */
void kvcd_cal_release(struct kvcd_cal_job *j);
void kvcd_cal_free(struct kvcd_cal_job *j);

/* ---- session.c: one attached client --------------------------------------------------------- */

struct kvcd_session {
	uint32_t id;
	int sock, pidfd;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	bool admin;
	uint16_t ns_id;
	char ns[KVCP_NS_MAX];
	uint8_t order[KVCD_MAX_NODES]; /* pools, nearest first */
	unsigned norder;
	unsigned worker;

	struct kvcp_shm_hdr *hdr;
	size_t ctrl_size;
	struct kvcp_sqe *sq;
	struct kvcp_cqe *cq;
	char *scratch;
	size_t scratch_size;
	char *staging;
	size_t staging_size;
	uint32_t sq_entries, cq_entries;
	/* daemon-private ring indices: never read back from shared memory */
	uint32_t sq_cons, cq_prod, cq_cons_cache;
	bool phase; /* phase-tagged ring entries (KVCP_COMPAT_PHASE) */

	/* policies registered with KVCP_OP_POLICY: slot i is layout.codec i + 1 (worker only) */
	struct kvcd_policy pol[KVCP_POLICY_SLOTS];
	unsigned npol;
	struct kvcd_pin_owner pins; /* under the store lock */

	/* a request executed in slices (a long LOOKUP): the worker serves other sessions in
	 * between and takes nothing else from this ring until it is done */
	struct kvcd_cont {
		bool active;
		uint8_t kind;		   /* KVCD_CONT_* */
		struct kvcp_sqe sqe;	   /* the request, as read */
		uint64_t done;		   /* keys looked up so far, all cached */
		uint64_t ns;		   /* service time so far */
		struct kvcd_rget *rget;	   /* blocks asked of the remote tier */
		struct kvcd_gpu_job *gjob; /* a copy (and codec) a GPU's mover does */
		struct kvcd_cal_job *cjob; /* a CALIBRATE, on its own thread */
	} cont;
	bool said_long; /* sq.hint says KVCP_HINT_LONG (worker.c) */

	/* GPU staging, one allocation per device the client asked for (index as in STATS) */
	uint32_t gpu_mask;
	struct kvcd_gpu_staging {
		CUmemGenericAllocationHandle h;
		CUdeviceptr ptr; /* kvcd's own mapping */
		uint64_t size;
	} gpu[KVCD_MAX_GPUS];

	uint64_t requests, bad_requests; /* written by the worker, read relaxed */
	int broken;			 /* protocol violation: main thread disconnects */
};

enum {
	KVCD_CONT_LOOKUP,	 /* a LOOKUP, a slice at a time */
	KVCD_CONT_REMOTE_LOOKUP, /* the chunks after the local prefix, asked of the remote tier */
	KVCD_CONT_REMOTE_FETCH,	 /* a local miss, asked of the remote tier */
	KVCD_CONT_GPU,		 /* a STORE or FETCH of GPU staging, at a GPU's mover */
	KVCD_CONT_CALIBRATE	 /* a CALIBRATE, on its own thread */
};

struct kvcd;

/* Build a session for an accepted, authenticated peer: memfds, mappings, seals. Returns 0 or
 * -errno; on success *@fds hold the two memfds to send (the caller closes them). */
int kvcd_session_create(struct kvcd *d, const struct kvcp_attach_req *req, size_t staging,
			struct kvcd_session *s, int fds[2]);
void kvcd_session_destroy(struct kvcd_session *s);

/* ---- stats.c: per-op counts and service-time histograms ---------------------------------- */

#define KVCD_HIST 256

/* Service times, log-linear: 8 buckets per power of two of nanoseconds. */
struct kvcd_hist {
	uint64_t b[KVCD_HIST];
};

/* One worker's record of the requests it executed; read by STATS with relaxed loads. */
struct kvcd_op_stats {
	uint64_t count[KVCP_OP__COUNT], errors[KVCP_OP__COUNT];
	struct kvcd_hist hist[KVCP_OP__COUNT];
};

/* Count a request of @opcode (any value: unknown ones count as NOP) that returned @res and
 * took @ns. Only @st's worker writes it. */
void kvcd_op_record(struct kvcd_op_stats *st, uint8_t opcode, int32_t res, uint64_t ns);
unsigned kvcd_hist_bucket(uint64_t ns);
uint64_t kvcd_hist_value(unsigned bucket);

/* ---- worker.c ------------------------------------------------------------------------------ */

#define KVCD_WORKER_MAX_SESSIONS 127 /* futex_waitv takes 128 words; one is the worker's */

struct kvcd_worker {
	struct kvcd *d;
	unsigned id;
	pthread_t thread;
	pthread_mutex_t lock; /* protects sessions[], gen */
	pthread_cond_t acked;
	struct kvcd_session *sessions[KVCD_WORKER_MAX_SESSIONS];
	unsigned nsessions;
	uint32_t gen, seen_gen;
	uint32_t wake; /* private futex: list changed or stop */
	bool stop;
	bool parked; /* the latest request it began waits on the remote tier: sleep, not spin */
	bool spin;   /* its latest pass answered a client that spins for its answers */
	unsigned poll_us; /* without futex_waitv: how long an idle look at the rings sleeps */
	struct kvcd_op_stats ops; /* what this worker executed (stats.c) */
};

int kvcd_worker_start(struct kvcd_worker *w, struct kvcd *d, unsigned id);
void kvcd_worker_stop(struct kvcd_worker *w);
/* Hand @s to @w / take it back. Removal returns once the worker no longer touches @s. */
int kvcd_worker_add(struct kvcd_worker *w, struct kvcd_session *s);
void kvcd_worker_remove(struct kvcd_worker *w, struct kvcd_session *s);

/* ---- ops.c: the request handlers ------------------------------------------------------------ */

/* Validate and execute @sqe, a copy of what @s submitted, into @cqe. Called by @s's worker
 * (and by tests); never blocks on anything but the store lock. Returns false when the
 * request was only begun (s->cont): kvcd_resume() goes on with it later. */
bool kvcd_execute(struct kvcd *d, struct kvcd_session *s, const struct kvcp_sqe *sqe,
		  struct kvcp_cqe *cqe);
/* Go on with s->cont for one more slice; true when @cqe holds its completion. */
bool kvcd_resume(struct kvcd *d, struct kvcd_session *s, struct kvcp_cqe *cqe);
/* A session going away with a request at a GPU's mover: wait for the mover to be done with
 * it, then give back what it held (the block reserved or referenced, its buffers). Main
 * thread, after the worker let the session go. */
void kvcd_cont_abandon(struct kvcd *d, struct kvcd_session *s);

/* ---- main.c and stats.c: the daemon object --------------------------------------------------------------- */

struct kvcd {
	struct kvcd_config cfg;
	struct kvcd_topo topo;
	struct kvcd_pool pools[KVCD_MAX_NODES];
	unsigned npools;
	struct kvcd_store store;
	struct kvcd_worker *workers; /* max_workers slots, nworkers running */
	unsigned nworkers, max_workers;
	uint64_t boot_token, start_ns;
	uid_t euid;
	int reap_fd; /* eventfd: a worker found a broken session */

	void *metrics;		    /* the HTTP server of metrics.c, or NULL */
	struct kvcd_remote *remote; /* remote.c, or NULL */
	struct kvcp_gpu_stats gpu;  /* gpu.c: the devices found, as STATS reports them */
	void *cuda;		    /* libcuda.so.1, when loaded */
	struct kvcg_cu cu;	    /* its entry points */
	struct kvcd_gpu_dev *gdev;  /* one per device in gpu.dev[], or NULL */

	pthread_mutex_t sessions_lock; /* protects the list and bad_closed */
	uint64_t bad_closed;	       /* bad requests of sessions already gone */
	/* what RECOMPRESS did: atomics (ops.c) */
	struct kvcp_recompress_stats recompress;
	struct kvcd_bases bases; /* basis.c */
	struct kvcd_session **sessions;
	unsigned nsessions, cap_sessions;
	uint32_t next_id;
};

/* remote.c: the remote tier. */
struct kvcd_remote;

/* A batch of blocks a worker wants from the cluster. The remote thread puts each value that
 * checks out into the pool (namespace @ns_id, which the get holds, on the pools of @order),
 * says in err[] what became of each, sets done and bumps *wake. */
#define KVCD_RGET_MAX 64
struct kvcd_rget {
	struct kvcd_rget *next;
	struct kvcd_store *store;
	uint16_t ns_id;
	uint8_t order[KVCD_MAX_NODES];
	unsigned norder;
	uint64_t ns_hash;
	unsigned n;
	struct kvcp_key keys[KVCD_RGET_MAX];
	int err[KVCD_RGET_MAX];	     /* 0: in the pool; -ENOENT: not in the cluster (or lost);
				      * -EBADMSG: rejected; else the pool's error */
	int sent[KVCD_RGET_MAX];     /* the node each GET went to, or -1 */
	unsigned gen[KVCD_RGET_MAX]; /* and that node's connection generation */
	uint32_t *wake;		     /* the waiting worker's futex word */
	int done;
};

int kvcd_remote_start(struct kvcd *d);
void kvcd_remote_stop(struct kvcd *d);
uint64_t kvcd_remote_ns_hash(const char *ns);
/* Queue a copy of a block for the cluster (dropped and counted when the queue is full). */
void kvcd_remote_put(struct kvcd *d, const char *ns, const struct kvcp_key *key,
		     const struct kvcp_layout *l, const void *bytes, uint64_t stored);
/* Queue @g; the remote thread sets g->done when every value is in (or known missing). */
void kvcd_remote_get(struct kvcd *d, struct kvcd_rget *g);
void kvcd_remote_stats(struct kvcd *d, struct kvcp_remote_stats *st);
/* A session that goes away drops its get: freed now if done, else by the remote thread.
 * Freeing releases the get's hold on its namespace. */
void kvcd_rget_release(struct kvcd_rget *g);
void kvcd_rget_free(struct kvcd_rget *g);

/* gpu/pool.c: a device's GPU pool as the host keeps account of it (no CUDA call there). The
 * pool is inclusive: a copy holds a committed host block's stored bytes, found by the block's
 * record id, so it can be dropped at any time; dropping the least recently used ones when the
 * pool crosses its high watermark is the GPU tier's demotion. Offsets come from alloc.c's TLSF
 * run over a MAP_NORESERVE host mirror of the device range, whose pages are touched only
 * where the allocator's headers are. Every call takes p->lock; the store may call
 * kvcd_gpool_forget under its own lock (store lock, then a pool's, never the other way). */
struct kvcd_gpool_ent {
	uint32_t rec;  /* the host block's record id */
	uint32_t refs; /* its filler and its readers */
	uint64_t off;  /* in the device pool, 64-byte aligned */
	uint64_t len;  /* the block's stored bytes */
	uint8_t state; /* gpu/pool.c's */
	struct kvcd_gpool_ent *hnext, *lprev, *lnext;
};

struct kvcd_gpool {
	pthread_mutex_t lock;
	char *mirror;  /* the host mirror of the device range; NULL: no pool */
	uint64_t size; /* bytes of both */
	struct kvcd_alloc alloc;
	struct kvcd_gpool_ent **buckets;
	size_t nbuckets, count;
	struct kvcd_gpool_ent lru; /* lnext: least recently used */
	unsigned high_wm, low_wm;  /* percent of size */
	uint64_t blocks, hits, misses, promotions, demotions, no_room, forgotten;
};

/* Account for a device pool of @size bytes. Returns 0, -ENOMEM or -EINVAL (too small). */
int kvcd_gpool_init(struct kvcd_gpool *p, uint64_t size, unsigned high_wm, unsigned low_wm);
void kvcd_gpool_fini(struct kvcd_gpool *p);
/* The live copy of block record @rec, referenced (kvcd_gpool_put) and made most recently
 * used; NULL when there is none. Counted as a hit or a miss. */
struct kvcd_gpool_ent *kvcd_gpool_get(struct kvcd_gpool *p, uint32_t rec);
/* Room for a copy of record @rec, @len bytes, referenced for its filler and invisible until
 * kvcd_gpool_filled: least recently used copies nobody reads are dropped to make it (down to
 * the low watermark once the high one would be crossed). NULL when a copy exists or is being
 * filled, or when there is no room even so (counted). */
struct kvcd_gpool_ent *kvcd_gpool_fill(struct kvcd_gpool *p, uint32_t rec, uint64_t len);
/* The filler is done: @ok publishes the copy (a promotion), else it goes. Drops the filler's
 * reference. */
void kvcd_gpool_filled(struct kvcd_gpool *p, struct kvcd_gpool_ent *e, bool ok);
void kvcd_gpool_put(struct kvcd_gpool *p, struct kvcd_gpool_ent *e);
/* The bytes of record @rec's block are freed or rewritten: its copy goes (now, or when its last
 * reader puts it). */
void kvcd_gpool_forget(struct kvcd_gpool *p, uint32_t rec);
void kvcd_gpool_stats(struct kvcd_gpool *p, struct kvcp_gpu_pool *out);
/* New watermarks (a reload); @p NULL: nothing. */
void kvcd_gpool_watermarks(struct kvcd_gpool *p, unsigned high_wm, unsigned low_wm);

/* gpu.c: find the CUDA devices [gpu] asks for (the driver loaded at run time) and the NUMA
 * node nearest each (@sysfs: the sysfs root, NULL: /sys), into d->gpu; logs what it finds or
 * why there is none. Never fails: without a GPU kvcd serves from host memory. */
void kvcd_gpu_probe(struct kvcd *d, const char *sysfs);
/* After the pools: open each device found (primary context, codec kernels, a stream), check
 * that it can share memory with engines (VMM allocations exported as POSIX fds), give it its
 * GPU pool ([gpu] pool_size), register the pools with the driver for DMA and start its
 * mover. A device that cannot share memory is left out, said once. Returns 0, or -ENOMEM
 * (said, with what to change) when a device at work cannot have its GPU pool, which stops
 * kvcd before it is ready. */
int kvcd_gpu_start(struct kvcd *d);
void kvcd_gpu_close(struct kvcd *d);

/* A copy between a client's GPU staging and host memory (a pool block or a bounce buffer),
 * or the device's GPU pool, with the GPU codec on the way where the job says, done by a
 * device's mover thread so no worker waits on the GPU. With @pool, the first four also leave
 * the block's stored bytes at @pool in the GPU pool (a copy being filled). The mover sets res
 * (0, -EIO, or the codec's -EINVAL/-ERANGE), then done, and bumps *wake. */
enum kvcd_gpu_op {
	KVCD_GPU_D2H,	     /* staging -> host */
	KVCD_GPU_ENCODE_D2H, /* staging -> encode on the GPU -> host (the units after the header) */
	KVCD_GPU_H2D,	     /* host -> staging */
	KVCD_GPU_H2D_DECODE, /* an encoded block, host -> the GPU -> decode -> staging */
	KVCD_GPU_POOL_COPY,  /* a raw block's copy in the GPU pool -> staging */
	KVCD_GPU_POOL_DECODE /* an encoded block's copy in the GPU pool -> decode -> staging */
};

struct kvcd_gpu_job {
	struct kvcd_gpu_job *next;
	int op;		  /* enum kvcd_gpu_op */
	unsigned dev;	  /* index in d->gpu.dev[] */
	CUdeviceptr gptr; /* the staging range */
	uint64_t glen;
	void *host; /* host bytes: the whole block (with its header when encoded) */
	uint64_t hlen;
	struct kvcg_job cj; /* ENCODE_D2H, H2D_DECODE, POOL_DECODE */
	CUdeviceptr pool;   /* the block's bytes in the GPU pool (read, or written on the way);
			     * 0: none */
	struct kvcd_gpool_ent *pent; /* that copy, referenced: filled (!hit) or read (hit) */
	bool hit;
	uint32_t *wake; /* the waiting worker's futex word */
	int res;
	int done;

	/* what the worker does on resuming, kept here across the wait */
	int stage;		/* ops.c's */
	struct kvcd_block *blk; /* the block reserved (STORE) or referenced (FETCH) */
	struct kvcd_plan plan;	/* STORE */
	struct kvcd_policy pol; /* STORE */
	void *bounce;		/* host bytes of a block the CPU codec encodes or decodes */
	bool corrupt;		/* FETCH: the pool's bytes did not match their checksum */
	bool has_parent;	/* STORE: the staging range ends with the block's parent */
	uint64_t parent_off;	/* its offset from gptr, copied by the mover into parent */
	struct kvcp_key parent;
	uint64_t value;		   /* FETCH: the completion's */
	struct kvcp_layout layout; /* FETCH: the completion's */
};

/* STATS' view of each device at work, into @out[gpu.ndev]. */
void kvcd_gpu_use(const struct kvcd *d, struct kvcp_gpu_use *out);
/* Count a GPU STORE or FETCH on device @index that is done (and whether it went through a
 * bounce buffer). */
void kvcd_gpu_count_request(struct kvcd *d, unsigned index, bool store, bool bounced);
/* Device @index's GPU pool, or NULL when it has none. */
struct kvcd_gpool *kvcd_gpu_pool(struct kvcd *d, unsigned index);
/* Its device address at pool offset @off. */
CUdeviceptr kvcd_gpu_pool_at(struct kvcd *d, unsigned index, uint64_t off);
/* STATS' view of each device's GPU pool, into @out[gpu.ndev] (left 0 where none). */
void kvcd_gpu_pools(struct kvcd *d, struct kvcp_gpu_pool *out);
/* Does device @index have the codec kernels loaded? */
bool kvcd_gpu_has_codecs(const struct kvcd *d, unsigned index);
/* Queue @j on its device's mover. Returns 0, or -ENODEV when that mover is not running. */
int kvcd_gpu_submit(struct kvcd *d, struct kvcd_gpu_job *j);
/* GPU staging of @size bytes (rounded up to the device's granularity) on device @index, mapped
 * in kvcd, and the POSIX fd that exports it (*@fd, the caller sends and closes it). Returns 0,
 * -ENODEV (no such device ready) or -ENOMEM (with a log line saying why). */
int kvcd_gpu_staging_create(struct kvcd *d, unsigned index, uint64_t size,
			    struct kvcd_gpu_staging *st, int *fd);
void kvcd_gpu_staging_destroy(struct kvcd *d, unsigned index, struct kvcd_gpu_staging *st);
/* The GPU part of an attach that asked for it (whose session kvcd_session_create ordered from
 * its device's node): staging on each device of req->gpu_mask (0: every device that has
 * staging), and the second message with its fds (@fds, the caller
 * sends and closes them). Returns 0, -ENODEV (no such device, or none can share memory),
 * -E2BIG (over [gpu] staging_max) or -ENOMEM. kvcd_gpu_detach frees what it made. */
int kvcd_gpu_attach(struct kvcd *d, const struct kvcp_attach_req *req, struct kvcd_session *s,
		    struct kvcp_attach_gpu *msg, int *fds);
void kvcd_gpu_detach(struct kvcd *d, struct kvcd_session *s);
/* The node a GPU client's blocks go to: its own @hint (an OS node, -1: none), else the node
 * nearest the first device of @mask that has one, else -1 (the client's CPUs decide). Pure. */
int kvcd_gpu_node(const struct kvcp_gpu_stats *g, uint64_t mask, int hint);
/* The numa_node of PCI function @pci ("0000:3b:00.0", either case) under sysfs root @sysfs
 * (NULL: /sys): an OS node id, or -1 when unknown. */
int kvcd_pci_numa_node(const char *sysfs, const char *pci);

/* metrics.c: Prometheus text on HTTP from its own thread, when cfg.metrics_listen is set.
 * Returns 0 or -errno (printed). */
int kvcd_metrics_start(struct kvcd *d);
void kvcd_metrics_stop(struct kvcd *d);

/* Snapshot of the attached clients @asker may see (all for an admin, else its uid's), for
 * the CLIENTS request. Returns the count. */
unsigned kvcd_clients(struct kvcd *d, const struct kvcd_session *asker, struct kvcp_client_ent *out,
		      unsigned max);
/* Fill the whole STATS answer; a non-admin @asker sees only the namespaces its uid is
 * attached to. */
void kvcd_stats(struct kvcd *d, const struct kvcd_session *asker, struct kvcp_stats *st);

#endif /* KVCD_H */
