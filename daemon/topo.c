/* topo.c - NUMA topology (hwloc) and where a client's blocks should live.
 *
 * Loading is hwloc's job; the decision (kvcd_topo_order) is a pure function of struct
 * kvcd_topo so it can be tested on synthetic multi-node machines while this one has a single
 * node. The mechanism that binds memory (mbind) lives in pool.c.
 */
#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kvcd.h"

static void cpuset_to_mask(hwloc_const_bitmap_t set, uint64_t mask[16])
{
	int i;

	memset(mask, 0, 16 * sizeof(uint64_t));
	hwloc_bitmap_foreach_begin(i, set) if (i < 1024) mask[i / 64] |= 1ull << (i % 64);
	hwloc_bitmap_foreach_end();
}

static void load_distances(struct kvcd_topo *t, hwloc_topology_t topo, hwloc_obj_t *objs)
{
	struct hwloc_distances_s *dist[1];
	unsigned nr = 1;

	if (hwloc_distances_get_by_type(topo, HWLOC_OBJ_NUMANODE, &nr, dist,
					HWLOC_DISTANCES_KIND_MEANS_LATENCY, 0) ||
	    nr == 0)
		return;
	for (unsigned a = 0; a < t->nnodes; a++)
		for (unsigned b = 0; b < t->nnodes; b++) {
			hwloc_uint64_t ab, ba;

			if (!hwloc_distances_obj_pair_values(dist[0], objs[a], objs[b], &ab, &ba))
				t->dist[a][b] = ab;
		}
	hwloc_distances_release(topo, dist[0]);
}

int kvcd_topo_load(struct kvcd_topo *t, const char *spec)
{
	hwloc_topology_t topo;
	hwloc_obj_t objs[KVCD_MAX_NODES];
	int n, err = 0;

	memset(t, 0, sizeof(*t));
	if (hwloc_topology_init(&topo))
		return -ENOMEM;
	if (spec && access(spec, R_OK) == 0)
		err = hwloc_topology_set_xml(topo, spec);
	else if (spec)
		err = hwloc_topology_set_synthetic(topo, spec);
	if (err || hwloc_topology_load(topo)) {
		err = -EINVAL;
		goto out;
	}
	n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
	if (n <= 0) {
		err = -ENODEV;
		goto out;
	}
	if (n > KVCD_MAX_NODES) {
		kvcd_log(LOG_WARNING, "%d NUMA nodes, using the first %d", n, KVCD_MAX_NODES);
		n = KVCD_MAX_NODES;
	}
	t->nnodes = (unsigned)n;
	for (int i = 0; i < n; i++) {
		objs[i] = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)i);
		t->os_index[i] = (int)objs[i]->os_index;
		cpuset_to_mask(objs[i]->cpuset, t->cpus[i]);
	}
	for (int a = 0; a < n; a++)
		for (int b = 0; b < n; b++) {
			hwloc_obj_t anc = hwloc_get_common_ancestor_obj(topo, objs[a], objs[b]);

			t->ancestor_depth[a][b] = (uint8_t)(a == b ? 255 : anc ? anc->depth : 0);
		}
	load_distances(t, topo, objs);
out:
	hwloc_topology_destroy(topo);
	return err;
}

static unsigned overlap(const uint64_t a[16], const uint64_t b[16])
{
	unsigned n = 0;

	for (int i = 0; i < 16; i++)
		n += (unsigned)__builtin_popcountll(a[i] & b[i]);
	return n;
}

/* Is node @x closer to @from than node @y? Distances when known, else the depth of the common
 * ancestor in the tree (nodes in the same package before nodes across packages). */
static bool closer(const struct kvcd_topo *t, unsigned from, unsigned x, unsigned y)
{
	if (t->dist[from][x] && t->dist[from][y] && t->dist[from][x] != t->dist[from][y])
		return t->dist[from][x] < t->dist[from][y];
	if (t->ancestor_depth[from][x] != t->ancestor_depth[from][y])
		return t->ancestor_depth[from][x] > t->ancestor_depth[from][y];
	return x < y;
}

unsigned kvcd_topo_order(const struct kvcd_topo *t, const uint64_t cpus[16], int hint,
			 uint8_t order[KVCD_MAX_NODES])
{
	unsigned first = 0, best = 0, n = t->nnodes;
	bool found = false;

	for (unsigned i = 0; i < n && hint >= 0; i++)
		if (t->os_index[i] == hint) {
			first = i;
			found = true;
		}
	for (unsigned i = 0; i < n && !found && cpus; i++) {
		unsigned o = overlap(cpus, t->cpus[i]);

		if (o > best) {
			best = o;
			first = i;
		}
	}
	order[0] = (uint8_t)first;
	for (unsigned i = 0, k = 1; i < n; i++)
		if (i != first)
			order[k++] = (uint8_t)i;
	/* insertion sort of the rest by closeness to the first: n <= 16 */
	for (unsigned i = 2; i < n; i++)
		for (unsigned j = i; j > 1 && closer(t, first, order[j], order[j - 1]); j--) {
			uint8_t tmp = order[j];

			order[j] = order[j - 1];
			order[j - 1] = tmp;
		}
	return n;
}
