/* gpu.c - the GPU tier, as far as it is built: kvcd finds the CUDA devices it is to use and
 * the NUMA node nearest each, and reports them (STATS, kvcctl, metrics).
 *
 * The CUDA driver API is loaded at run time (dlopen of libcuda.so.1, the driver's own
 * library): kvcd has no link-time CUDA dependency, starts where there is no driver, and says
 * so in one log line and in STATS. A device's nearest node is its PCI function's numa_node
 * in sysfs (what hwloc reads for PCI locality); -1 there means the platform does not say,
 * which is logged. The driver table and the codec kernels are daemon/gpu/.
 *
 * At work (kvcd_gpu_start, after the pools): each device's primary context, a stream and a
 * mover thread; a client that asks for GPU access gets GPU staging on each device (a VMM
 * allocation exported as a POSIX fd, which kvcd maps too), and its STOREs from and FETCHes
 * into that staging are copies between it and the host pools, done by the mover (encoded or
 * decoded on the GPU when the kernels take the block). With [gpu] pool_size, each device also
 * has a GPU pool (one more VMM allocation, private to kvcd) holding copies of blocks, kept
 * account of on the host (gpu/pool.c): a GPU FETCH of a block with a copy there is a
 * device-to-device copy, or a decode on the device, with nothing crossing PCIe; a GPU STORE
 * leaves its block's bytes there as it writes them to the host pool, and a FETCH that misses
 * leaves them there on the way (promotion). The store tells the pools when a block's bytes go
 * (kvcd_store.forget).
 */
#include <dlfcn.h>
#include <errno.h>
#include <numa.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/rt.h"
#include "kvcd.h"

int kvcd_pci_numa_node(const char *sysfs, const char *pci)
{
	char path[256], bdf[32];
	FILE *f;
	int node = -1;

	/* sysfs names the function in lower case; the driver may give upper case */
	snprintf(bdf, sizeof(bdf), "%s", pci);
	for (char *c = bdf; *c; c++)
		*c = (char)(*c >= 'A' && *c <= 'F' ? *c - 'A' + 'a' : *c);
	snprintf(path, sizeof(path), "%s/bus/pci/devices/%s/numa_node", sysfs ? sysfs : "/sys",
		 bdf);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%d", &node) != 1 || node < -1)
		node = -1;
	fclose(f);
	return node;
}

/* The ordinals [gpu] devices asks for, of @count there are: into @out; their number. */
static unsigned wanted(const struct kvcd_config *c, int count, int *out, char *why, size_t len)
{
	unsigned n = 0;

	if (c->gpu_all) {
		for (int i = 0; i < count && n < KVCD_MAX_GPUS; i++)
			out[n++] = i;
		return n;
	}
	for (unsigned i = 0; i < c->gpu_ndev; i++) {
		if (c->gpu_dev[i] < count)
			out[n++] = c->gpu_dev[i];
		else
			snprintf(why, len, "device %d asked for, %d present", c->gpu_dev[i], count);
	}
	return n;
}

void kvcd_gpu_probe(struct kvcd *d, const char *sysfs)
{
	struct kvcp_gpu_stats *g = &d->gpu;
	struct kvcg_cu cu = { 0 };
	char err[64];
	int count = 0, ord[KVCD_MAX_GPUS];
	unsigned n;
	CUresult e;

	memset(g, 0, sizeof(*g));
	if (!d->cfg.gpu_all && !d->cfg.gpu_ndev) {
		g->status = KVCP_GPU_OFF;
		snprintf(g->why, sizeof(g->why), "[gpu] devices = none");
		return;
	}
	e = kvcg_cu_load(&cu, &d->cuda, g->why, sizeof(g->why));
	if (e == -ENOENT) {
		g->status = KVCP_GPU_NO_DRIVER;
		kvcd_log(LOG_NOTICE, "gpu: %s; host tiers only", g->why);
		return;
	}
	if (e) /* the library lacks an entry point: why says which */
		;
	else if ((e = cu.init(0)))
		snprintf(g->why, sizeof(g->why), "cuInit: %s",
			 kvcg_cu_err(&cu, e, err, sizeof(err)));
	else if ((e = cu.driver_version(&g->driver_version)) || (e = cu.count(&count)))
		snprintf(g->why, sizeof(g->why), "the driver: %s",
			 kvcg_cu_err(&cu, e, err, sizeof(err)));
	if (e) {
		g->status = KVCP_GPU_DRIVER_ERROR;
		kvcd_log(LOG_WARNING, "gpu: %s; host tiers only", g->why);
		return;
	}
	n = wanted(&d->cfg, count, ord, g->why, sizeof(g->why));
	for (unsigned i = 0; i < n; i++) {
		struct kvcp_gpu_dev *v = &g->dev[g->ndev];
		size_t mem = 0;
		CUdevice dev;

		if ((e = cu.get(&dev, ord[i])) || (e = cu.name(v->name, sizeof(v->name), dev)) ||
		    (e = cu.total_mem(&mem, dev)) ||
		    (e = cu.pci_bus_id(v->pci, sizeof(v->pci), dev))) {
			kvcd_log(LOG_WARNING, "gpu: device %d: %s; left out", ord[i],
				 kvcg_cu_err(&cu, e, err, sizeof(err)));
			memset(v, 0, sizeof(*v));
			continue;
		}
		v->ordinal = ord[i];
		v->mem_bytes = mem;
		v->numa_node = kvcd_pci_numa_node(sysfs, v->pci);
		if (v->numa_node < 0)
			kvcd_log(LOG_NOTICE,
				 "gpu %d (%s, %s): the platform gives no NUMA node; placed as the "
				 "first node",
				 v->ordinal, v->name, v->pci);
		kvcd_log(LOG_INFO, "gpu %d: %s, %s, %.1f GiB, nearest node %d (pools not built)",
			 v->ordinal, v->name, v->pci, (double)mem / (1 << 30), v->numa_node);
		g->ndev++;
	}
	if (!g->ndev) {
		g->status = KVCP_GPU_NO_DEVICE;
		if (!g->why[0])
			snprintf(g->why, sizeof(g->why),
				 "the driver sees %d device(s), none usable", count);
		kvcd_log(LOG_NOTICE, "gpu: %s; host tiers only", g->why);
		return;
	}
	d->cu = cu;
	g->status = KVCP_GPU_READY;
	snprintf(g->why, sizeof(g->why), "%u device(s) found", g->ndev);
}

/* ---- the devices at work: GPU staging and the movers ---------------------------------------- */

struct kvcd_gpu_dev {
	struct kvcd *d;
	unsigned index;
	struct kvcg_dev dv;
	bool open;  /* dv holds a context */
	bool ready; /* staging can be handed out and the mover runs */
	size_t gran;
	int numa_node;
	CUstream stream;
	CUdeviceptr scratch, err; /* the mover's: encoded blocks on their way, the codec's error */
	size_t scratch_size;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cv;
	struct kvcd_gpu_job *head, **tail;
	bool stop;
	struct kvcp_gpu_use use; /* the mover's counts, and attach's; read relaxed by STATS */
	struct kvcd_gpu_staging pool_mem; /* the GPU pool's memory; h 0: no pool */
	struct kvcd_gpool pool;		  /* and its account */
	bool pool_failed;		  /* [gpu] pool_size could not be had */
};

static bool pools_registered;

static struct kvcg_mem_prop staging_prop(int ordinal)
{
	struct kvcg_mem_prop p = { .type = KVCG_MEM_ALLOCATION_PINNED,
				   .handle_types = KVCG_MEM_HANDLE_POSIX_FD };

	p.location.type = KVCG_MEM_LOCATION_DEVICE;
	p.location.id = ordinal;
	return p;
}

/* The mover's device scratch, grown to @n bytes. */
static int scratch_for(struct kvcd_gpu_dev *gd, size_t n)
{
	const struct kvcg_cu *cu = &gd->d->cu;

	if (n <= gd->scratch_size)
		return 0;
	if (gd->scratch)
		cu->mem_free(gd->scratch);
	gd->scratch = 0;
	gd->scratch_size = 0;
	if (cu->mem_alloc(&gd->scratch, n))
		return -ENOMEM;
	gd->scratch_size = n;
	return 0;
}

/* Do @j on @gd's stream and wait for it. */
static int run_job(struct kvcd_gpu_dev *gd, struct kvcd_gpu_job *j)
{
	const struct kvcg_cu *cu = &gd->d->cu;
	const struct kvcg_job *cj = &j->cj;
	CUstream st = gd->stream;
	int kerr = 0;

	/* a STORE's parent, from the end of its range, for the worker to link the block with */
	if (j->has_parent &&
	    cu->dtoh_async(&j->parent, j->gptr + j->parent_off, sizeof(j->parent), st))
		return -EIO;
	switch (j->op) {
	case KVCD_GPU_D2H:
		if (cu->dtoh_async(j->host, j->gptr, j->hlen, st) ||
		    (j->pool && cu->dtod_async(j->pool, j->gptr, j->hlen, st)) ||
		    cu->stream_sync(st))
			return -EIO;
		return 0;
	case KVCD_GPU_H2D: /* through the pool's copy when one is filled on the way */
		if (j->pool ? cu->htod_async(j->pool, j->host, j->hlen, st) ||
				      cu->dtod_async(j->gptr, j->pool, j->hlen, st)
			    : cu->htod_async(j->gptr, j->host, j->hlen, st))
			return -EIO;
		return cu->stream_sync(st) ? -EIO : 0;
	case KVCD_GPU_ENCODE_D2H: {
		/* the kernels write the units at their offsets after the header: into the pool's
		 * copy, which also takes the header from the host, or into the scratch */
		CUdeviceptr to = j->pool;

		if (!to && scratch_for(gd, cj->bytes))
			return -ENOMEM;
		to = to ? to : gd->scratch;
		if ((j->pool && cu->htod_async(j->pool, j->host, cj->body, st)) ||
		    kvcg_encode(cu, &gd->dv, cj, j->gptr, to, gd->err, st) ||
		    cu->dtoh_async((char *)j->host + cj->body, to + cj->body, cj->bytes - cj->body,
				   st) ||
		    cu->dtoh_async(&kerr, gd->err, sizeof(kerr), st) || cu->stream_sync(st))
			return -EIO;
		return kerr;
	}
	case KVCD_GPU_H2D_DECODE: {
		CUdeviceptr from = j->pool;

		if (!from && scratch_for(gd, j->hlen))
			return -ENOMEM;
		from = from ? from : gd->scratch;
		if (cu->htod_async(from, j->host, j->hlen, st) ||
		    kvcg_decode(cu, &gd->dv, cj, from, j->gptr, st) || cu->stream_sync(st))
			return -EIO;
		return 0;
	}
	case KVCD_GPU_POOL_COPY:
		if (cu->dtod_async(j->gptr, j->pool, j->glen, st) || cu->stream_sync(st))
			return -EIO;
		return 0;
	case KVCD_GPU_POOL_DECODE:
		if (kvcg_decode(cu, &gd->dv, cj, j->pool, j->gptr, st) || cu->stream_sync(st))
			return -EIO;
		return 0;
	}
	return -EINVAL;
}

#define ADD(x, v) __atomic_fetch_add(&(x), (v), __ATOMIC_RELAXED)

static void count(struct kvcp_gpu_use *u, const struct kvcd_gpu_job *j, int res, uint64_t ns)
{
	bool off = j->op == KVCD_GPU_D2H || j->op == KVCD_GPU_ENCODE_D2H;

	if (res) {
		ADD(u->errors, 1);
		return;
	}
	if (off) {
		ADD(u->d2h_bytes,
		    j->op == KVCD_GPU_ENCODE_D2H ? j->cj.bytes - j->cj.body : j->hlen);
		ADD(u->d2h_ns, ns);
	} else if (j->op == KVCD_GPU_POOL_COPY || j->op == KVCD_GPU_POOL_DECODE) {
		/* nothing crossed PCIe: the pool's own counts say what it served */
	} else {
		ADD(u->h2d_bytes, j->hlen);
		ADD(u->h2d_ns, ns);
	}
	ADD(u->encoded, j->op == KVCD_GPU_ENCODE_D2H);
	ADD(u->decoded, j->op == KVCD_GPU_H2D_DECODE || j->op == KVCD_GPU_POOL_DECODE);
}

void kvcd_gpu_use(const struct kvcd *d, struct kvcp_gpu_use *out)
{
	for (unsigned i = 0; d->gdev && i < d->gpu.ndev; i++) {
		const struct kvcp_gpu_use *u = &d->gdev[i].use;
		struct kvcp_gpu_use *o = &out[i];

		o->clients = __atomic_load_n(&u->clients, __ATOMIC_RELAXED);
		o->staging_bytes = __atomic_load_n(&u->staging_bytes, __ATOMIC_RELAXED);
		o->stores = __atomic_load_n(&u->stores, __ATOMIC_RELAXED);
		o->fetches = __atomic_load_n(&u->fetches, __ATOMIC_RELAXED);
		o->encoded = __atomic_load_n(&u->encoded, __ATOMIC_RELAXED);
		o->decoded = __atomic_load_n(&u->decoded, __ATOMIC_RELAXED);
		o->bounced = __atomic_load_n(&u->bounced, __ATOMIC_RELAXED);
		o->errors = __atomic_load_n(&u->errors, __ATOMIC_RELAXED);
		o->d2h_bytes = __atomic_load_n(&u->d2h_bytes, __ATOMIC_RELAXED);
		o->h2d_bytes = __atomic_load_n(&u->h2d_bytes, __ATOMIC_RELAXED);
		o->d2h_ns = __atomic_load_n(&u->d2h_ns, __ATOMIC_RELAXED);
		o->h2d_ns = __atomic_load_n(&u->h2d_ns, __ATOMIC_RELAXED);
	}
}

void kvcd_gpu_count_request(struct kvcd *d, unsigned index, bool store, bool bounced)
{
	if (!d->gdev || index >= d->gpu.ndev)
		return;
	ADD(*(store ? &d->gdev[index].use.stores : &d->gdev[index].use.fetches), 1);
	if (bounced)
		ADD(d->gdev[index].use.bounced, 1);
}

static void *mover(void *arg)
{
	struct kvcd_gpu_dev *gd = arg;
	struct kvcd_gpu_job *j;

	/* copies to and from host memory go fastest from the node nearest the device */
	if (gd->numa_node >= 0 && numa_available() >= 0)
		numa_run_on_node(gd->numa_node);
	kvcg_dev_bind(&gd->d->cu, &gd->dv);
	for (;;) {
		uint32_t *wake;
		int res;

		pthread_mutex_lock(&gd->lock);
		while (!gd->head && !gd->stop)
			pthread_cond_wait(&gd->cv, &gd->lock);
		j = gd->head;
		if (j) {
			gd->head = j->next;
			if (!gd->head)
				gd->tail = &gd->head;
		}
		pthread_mutex_unlock(&gd->lock);
		if (!j)
			break; /* stopped, and nothing left */
		uint64_t t0 = kvcd_now_ns();

		res = run_job(gd, j);
		count(&gd->use, j, res, kvcd_now_ns() - t0);
		if (res == -EIO || res == -ENOMEM)
			kvcd_log(LOG_WARNING, "gpu %d: a %s of %llu bytes failed: %s",
				 gd->dv.ordinal,
				 j->op == KVCD_GPU_D2H || j->op == KVCD_GPU_ENCODE_D2H ? "store"
										       : "fetch",
				 (unsigned long long)j->glen, strerror(-res));
		wake = j->wake; /* j may be freed as soon as done is set */
		j->res = res;
		__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
		if (wake) {
			__atomic_fetch_add(wake, 1, __ATOMIC_RELEASE);
			kvcd_futex_wake(wake, 1, false);
		}
	}
	return NULL;
}

int kvcd_gpu_submit(struct kvcd *d, struct kvcd_gpu_job *j)
{
	struct kvcd_gpu_dev *gd;

	if (!d->gdev || j->dev >= d->gpu.ndev || !d->gdev[j->dev].ready)
		return -ENODEV;
	gd = &d->gdev[j->dev];
	j->next = NULL;
	j->done = 0;
	pthread_mutex_lock(&gd->lock);
	*gd->tail = j;
	gd->tail = &j->next;
	pthread_cond_signal(&gd->cv);
	pthread_mutex_unlock(&gd->lock);
	return 0;
}

/* A VMM allocation of @size bytes (rounded up to the granularity) on @gd's device, mapped in
 * kvcd; with @fd, exported as a POSIX fd there. @what names it in the log. */
static int vmm_create(struct kvcd_gpu_dev *gd, uint64_t size, struct kvcd_gpu_staging *st, int *fd,
		      const char *what)
{
	struct kvcd *d = gd->d;
	struct kvcg_mem_prop prop;
	struct kvcg_mem_access acc = { .flags = KVCG_MEM_ACCESS_RW };
	const struct kvcg_cu *cu = &d->cu;
	char err[64];
	CUresult e;

	memset(st, 0, sizeof(*st));
	if (fd)
		*fd = -1;
	prop = staging_prop(gd->dv.ordinal);
	acc.location = prop.location;
	size = (size + gd->gran - 1) / gd->gran * gd->gran;
	kvcg_dev_bind(cu, &gd->dv);
	if ((e = cu->mem_create(&st->h, size, &prop, 0))) {
		kvcd_log(LOG_WARNING, "gpu %d: %s of %llu bytes: %s", gd->dv.ordinal, what,
			 (unsigned long long)size, kvcg_cu_err(cu, e, err, sizeof(err)));
		st->h = 0;
		return -ENOMEM;
	}
	if ((e = cu->va_reserve(&st->ptr, size, gd->gran, 0, 0))) {
		st->ptr = 0;
		goto fail;
	}
	if ((e = cu->mem_map(st->ptr, size, 0, st->h, 0))) {
		cu->va_free(st->ptr, size);
		st->ptr = 0;
		goto fail;
	}
	st->size = size;
	if ((e = cu->mem_set_access(st->ptr, size, &acc, 1)) ||
	    (fd && (e = cu->mem_export(fd, st->h, KVCG_MEM_HANDLE_POSIX_FD, 0))))
		goto fail;
	return 0;
fail:
	kvcd_log(LOG_WARNING, "gpu %d: %s: %s", gd->dv.ordinal, what,
		 kvcg_cu_err(cu, e, err, sizeof(err)));
	if (fd)
		*fd = -1;
	kvcd_gpu_staging_destroy(d, gd->index, st);
	return -ENOMEM;
}

int kvcd_gpu_staging_create(struct kvcd *d, unsigned index, uint64_t size,
			    struct kvcd_gpu_staging *st, int *fd)
{
	memset(st, 0, sizeof(*st));
	*fd = -1;
	if (!d->gdev || index >= d->gpu.ndev || !d->gdev[index].ready)
		return -ENODEV;
	return vmm_create(&d->gdev[index], size, st, fd, "GPU staging");
}

void kvcd_gpu_staging_destroy(struct kvcd *d, unsigned index, struct kvcd_gpu_staging *st)
{
	const struct kvcg_cu *cu = &d->cu;

	if (!st->h)
		return;
	kvcg_dev_bind(cu, &d->gdev[index].dv);
	if (st->size) {
		cu->mem_unmap(st->ptr, st->size);
		cu->va_free(st->ptr, st->size);
	}
	cu->mem_release(st->h);
	memset(st, 0, sizeof(*st));
}

/* Device @gd's GPU pool of [gpu] pool_size; false (said, with what to change) when the device
 * does not have the memory for it. */
static bool make_pool(struct kvcd_gpu_dev *gd)
{
	struct kvcd *d = gd->d;
	uint64_t size = (d->cfg.gpu_pool_size + gd->gran - 1) / gd->gran * gd->gran;
	size_t total = 0;
	int err;

	d->cu.total_mem(&total, gd->dv.dev);
	if (vmm_create(gd, size, &gd->pool_mem, NULL, "GPU pool")) {
		kvcd_log(LOG_ERR,
			 "gpu %d: no GPU pool of %llu bytes (the device has %llu in all, some of "
			 "it in use): lower [gpu] pool_size or --gpu-pool-size, or set it to 0",
			 gd->dv.ordinal, (unsigned long long)size, (unsigned long long)total);
		return false;
	}
	err = kvcd_gpool_init(&gd->pool, gd->pool_mem.size, d->cfg.high_wm, d->cfg.low_wm);
	if (err) {
		kvcd_log(LOG_ERR, "gpu %d: the GPU pool's account on the host: %s", gd->dv.ordinal,
			 strerror(-err));
		kvcd_gpu_staging_destroy(d, gd->index, &gd->pool_mem);
		return false;
	}
	kvcd_log(LOG_INFO, "gpu %d: GPU pool of %llu MiB", gd->dv.ordinal,
		 (unsigned long long)(gd->pool_mem.size >> 20));
	return true;
}

/* Bring device @i of d->gpu.dev[] to work; false (said once) when it cannot share memory. */
static bool start_dev(struct kvcd *d, unsigned i)
{
	struct kvcd_gpu_dev *gd = &d->gdev[i];
	const struct kvcg_cu *cu = &d->cu;
	struct kvcg_mem_prop prop;
	int vmm = 0, posix = 0, ordinal = d->gpu.dev[i].ordinal;
	char why[128], err[64];
	sigset_t all, old;
	CUresult e;

	gd->d = d;
	gd->index = i;
	gd->numa_node = d->gpu.dev[i].numa_node;
	gd->tail = &gd->head;
	pthread_mutex_init(&gd->lock, NULL);
	pthread_cond_init(&gd->cv, NULL);
	if (kvcg_dev_open(cu, ordinal, &gd->dv, why, sizeof(why))) {
		kvcd_log(LOG_WARNING, "gpu %d: %s; left out", ordinal, why);
		return false;
	}
	gd->open = true;
	if (!gd->dv.mod)
		kvcd_log(LOG_NOTICE, "gpu %d: %s: blocks it moves are encoded on the CPU", ordinal,
			 gd->dv.codec_why);
	prop = staging_prop(ordinal);
	if ((e = cu->attribute(&vmm, KVCG_ATTR_VMM_SUPPORTED, gd->dv.dev)) ||
	    (e = cu->attribute(&posix, KVCG_ATTR_POSIX_FD_SUPPORTED, gd->dv.dev)) || !vmm ||
	    !posix) {
		kvcd_log(LOG_WARNING,
			 "gpu %d: cannot share memory with engines (%s); no GPU staging there",
			 ordinal,
			 e	? kvcg_cu_err(cu, e, err, sizeof(err))
			 : !vmm ? "no virtual memory management"
				: "no POSIX file descriptor export");
		return false;
	}
	if ((e = cu->mem_granularity(&gd->gran, &prop, KVCG_MEM_GRANULARITY_MINIMUM)) ||
	    (e = cu->stream_create(&gd->stream, KVCG_STREAM_NON_BLOCKING)) ||
	    (e = cu->mem_alloc(&gd->err, sizeof(int)))) {
		kvcd_log(LOG_WARNING, "gpu %d: %s; no GPU staging there", ordinal,
			 kvcg_cu_err(cu, e, err, sizeof(err)));
		return false;
	}
	if (d->cfg.gpu_pool_size && !make_pool(gd)) {
		gd->pool_failed = true;
		return false;
	}
	if (!pools_registered) { /* once, portable: every device's copies are DMA */
		pools_registered = true;
		for (unsigned p = 0; p < d->npools; p++)
			if ((e = cu->host_register(d->pools[p].base, d->pools[p].size,
						   KVCG_HOST_REGISTER_PORTABLE)))
				kvcd_log(LOG_NOTICE,
					 "gpu: pool %u could not be registered for DMA (%s): "
					 "copies to the GPU go through the driver's buffers",
					 p, kvcg_cu_err(cu, e, err, sizeof(err)));
	}
	/* the mover takes no signal: the main thread reads them from its signalfd */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	e = pthread_create(&gd->thread, NULL, mover, gd);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (e) {
		kvcd_log(LOG_WARNING, "gpu %d: no mover thread: %s", ordinal, strerror(e));
		return false;
	}
	pthread_setname_np(gd->thread, "kvcd-gpu-mover");
	gd->ready = true;
	return true;
}

/* The store freed or rewrote record @rec's bytes: no pool keeps a copy of the old ones. */
static void forget(struct kvcd_store *s, uint32_t rec, void *arg)
{
	struct kvcd *d = arg;

	(void)s;
	for (unsigned i = 0; i < d->gpu.ndev; i++)
		if (d->gdev[i].pool.mirror)
			kvcd_gpool_forget(&d->gdev[i].pool, rec);
}

int kvcd_gpu_start(struct kvcd *d)
{
	struct kvcp_gpu_stats *g = &d->gpu;
	unsigned ready = 0, pools = 0;

	if (g->status != KVCP_GPU_READY) {
		if (d->cfg.gpu_pool_size)
			kvcd_log(LOG_NOTICE, "gpu: no GPU pool (%s); host tiers only", g->why);
		return 0;
	}
	d->gdev = calloc(g->ndev, sizeof(*d->gdev));
	if (!d->gdev)
		return -ENOMEM;
	for (unsigned i = 0; i < g->ndev; i++) {
		ready += start_dev(d, i);
		if (d->gdev[i].pool_failed)
			return -ENOMEM;
		pools += d->gdev[i].pool.mirror != NULL;
	}
	if (pools) {
		pthread_mutex_lock(&d->store.lock);
		d->store.forget_arg = d;
		d->store.forget = forget;
		pthread_mutex_unlock(&d->store.lock);
	}
	snprintf(g->why, sizeof(g->why),
		 "%u device(s), %u with GPU staging, %u with a GPU pool; GPU codecs %s", g->ndev,
		 ready, pools,
		 kvcg_fatbin_size() ? "built in" : "left out (no nvcc at build time)");
	kvcd_log(LOG_INFO, "gpu: %s", g->why);
	return 0;
}

struct kvcd_gpool *kvcd_gpu_pool(struct kvcd *d, unsigned index)
{
	if (!d->gdev || index >= d->gpu.ndev || !d->gdev[index].pool.mirror)
		return NULL;
	return &d->gdev[index].pool;
}

CUdeviceptr kvcd_gpu_pool_at(struct kvcd *d, unsigned index, uint64_t off)
{
	return d->gdev[index].pool_mem.ptr + off;
}

void kvcd_gpu_pools(struct kvcd *d, struct kvcp_gpu_pool *out)
{
	for (unsigned i = 0; d->gdev && i < d->gpu.ndev; i++)
		if (d->gdev[i].pool.mirror)
			kvcd_gpool_stats(&d->gdev[i].pool, &out[i]);
}

void kvcd_gpu_close(struct kvcd *d)
{
	pthread_mutex_lock(&d->store.lock);
	d->store.forget = NULL;
	pthread_mutex_unlock(&d->store.lock);
	for (unsigned i = 0; d->gdev && i < d->gpu.ndev; i++) {
		struct kvcd_gpu_dev *gd = &d->gdev[i];

		if (gd->ready) {
			pthread_mutex_lock(&gd->lock);
			gd->stop = true;
			pthread_cond_signal(&gd->cv);
			pthread_mutex_unlock(&gd->lock);
			pthread_join(gd->thread, NULL);
		}
		if (gd->open) {
			kvcg_dev_bind(&d->cu, &gd->dv);
			kvcd_gpu_staging_destroy(d, i, &gd->pool_mem);
			kvcd_gpool_fini(&gd->pool);
			if (gd->scratch)
				d->cu.mem_free(gd->scratch);
			if (gd->err)
				d->cu.mem_free(gd->err);
			if (gd->stream)
				d->cu.stream_destroy(gd->stream);
			if (pools_registered && i == 0)
				for (unsigned p = 0; p < d->npools; p++)
					d->cu.host_unregister(d->pools[p].base);
			kvcg_dev_close(&d->cu, &gd->dv);
		}
		pthread_mutex_destroy(&gd->lock);
		pthread_cond_destroy(&gd->cv);
	}
	free(d->gdev);
	d->gdev = NULL;
	pools_registered = false;
	if (d->cuda)
		dlclose(d->cuda);
	d->cuda = NULL;
}

int kvcd_gpu_attach(struct kvcd *d, const struct kvcp_attach_req *req, struct kvcd_session *s,
		    struct kvcp_attach_gpu *msg, int *fds)
{
	uint64_t size = req->gpu_staging_size ? req->gpu_staging_size : d->cfg.gpu_staging_default;
	uint64_t mask = req->gpu_mask, ready = 0;
	int err = 0;

	memset(msg, 0, sizeof(*msg));
	for (unsigned i = 0; d->gdev && i < d->gpu.ndev; i++)
		if (d->gdev[i].ready)
			ready |= 1ull << i;
	if (!ready)
		return -ENODEV;
	if (!mask)
		mask = ready;
	if (mask & ~ready)
		return -ENODEV;
	if (size > d->cfg.gpu_staging_max)
		return -E2BIG;
	for (unsigned i = 0; i < d->gpu.ndev && !err; i++) {
		struct kvcp_attach_gpu_dev *m = &msg->dev[msg->ndev];

		if (!(mask >> i & 1))
			continue;
		err = kvcd_gpu_staging_create(d, i, size, &s->gpu[i], &fds[msg->ndev]);
		if (err)
			break;
		s->gpu_mask |= 1u << i;
		ADD(d->gdev[i].use.clients, 1);
		ADD(d->gdev[i].use.staging_bytes, s->gpu[i].size);
		m->index = i;
		m->ordinal = d->gpu.dev[i].ordinal;
		memcpy(m->pci, d->gpu.dev[i].pci, sizeof(m->pci));
		m->size = s->gpu[i].size;
		msg->ndev++;
	}
	if (err) {
		for (unsigned i = 0; i < msg->ndev; i++)
			close(fds[i]);
		msg->ndev = 0;
		kvcd_gpu_detach(d, s);
		return err;
	}
	return 0;
}

int kvcd_gpu_node(const struct kvcp_gpu_stats *g, uint64_t mask, int hint)
{
	if (hint >= 0)
		return hint;
	for (unsigned i = 0; i < g->ndev && i < KVCD_MAX_GPUS; i++)
		if ((mask >> i & 1) && g->dev[i].numa_node >= 0)
			return g->dev[i].numa_node;
	return -1;
}

void kvcd_gpu_detach(struct kvcd *d, struct kvcd_session *s)
{
	for (unsigned i = 0; i < KVCD_MAX_GPUS; i++)
		if (s->gpu_mask >> i & 1) {
			__atomic_fetch_sub(&d->gdev[i].use.clients, 1, __ATOMIC_RELAXED);
			__atomic_fetch_sub(&d->gdev[i].use.staging_bytes, s->gpu[i].size,
					   __ATOMIC_RELAXED);
			kvcd_gpu_staging_destroy(d, i, &s->gpu[i]);
		}
	s->gpu_mask = 0;
}

bool kvcd_gpu_has_codecs(const struct kvcd *d, unsigned index)
{
	return d->gdev && index < d->gpu.ndev && d->gdev[index].ready && d->gdev[index].dv.mod;
}
