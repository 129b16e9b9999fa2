/* gpu.c - the GPU tier, as far as it is built: kvcd finds the CUDA devices it is to use and
 * the NUMA node nearest each, and reports them (STATS, kvcctl, metrics).
 *
 * The CUDA driver API is loaded at run time (dlopen of libcuda.so.1, the driver's own
 * library): kvcd has no link-time CUDA dependency, starts where there is no driver, and says
 * so in one log line and in STATS. A device's nearest node is its PCI function's numa_node
 * in sysfs (what hwloc reads for PCI locality); -1 there means the platform does not say,
 * which is logged. The driver table and the codec kernels are daemon/gpu/; the GPU pools,
 * their hand-off to engines and the movers are not built yet (docs/architecture.md).
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	struct kvcg_cu cu;
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
	g->status = KVCP_GPU_READY;
	snprintf(g->why, sizeof(g->why),
		 "%u device(s) found; GPU pools are not built yet; GPU codecs %s", g->ndev,
		 kvcg_fatbin_size() ? "built in" : "left out (no nvcc at build time)");
}

void kvcd_gpu_close(struct kvcd *d)
{
	if (d->cuda)
		dlclose(d->cuda);
	d->cuda = NULL;
}
