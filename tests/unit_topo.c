/* unit_topo.c - placement on synthetic multi-node machines (hwloc synthetic topologies) and on
 * hand-made distance matrices. This machine has one node; the decision does not care. */
#include "t_util.h"
#include "kvcd.h"

static void cpus_of(const struct kvcd_topo *t, unsigned node, uint64_t m[16])
{
	memcpy(m, t->cpus[node], 16 * sizeof(uint64_t));
}

Test(topo, real_machine_has_at_least_one_node)
{
	struct kvcd_topo t;

	cr_assert_eq(kvcd_topo_load(&t, NULL), 0);
	cr_assert_geq(t.nnodes, 1);
}

Test(topo, two_sockets_client_gets_its_own_node_first)
{
	struct kvcd_topo t;
	uint64_t m[16];
	uint8_t order[KVCD_MAX_NODES];

	cr_assert_eq(kvcd_topo_load(&t, "pack:2 [numa] core:4 pu:1"), 0);
	cr_assert_eq(t.nnodes, 2);
	cpus_of(&t, 1, m);
	cr_assert_eq(kvcd_topo_order(&t, m, -1, order), 2);
	cr_assert_eq(order[0], 1);
	cr_assert_eq(order[1], 0);
	cpus_of(&t, 0, m);
	kvcd_topo_order(&t, m, -1, order);
	cr_assert_eq(order[0], 0);
}

Test(topo, explicit_hint_wins_over_cpus)
{
	struct kvcd_topo t;
	uint64_t m[16];
	uint8_t order[KVCD_MAX_NODES];

	cr_assert_eq(kvcd_topo_load(&t, "pack:2 [numa] core:2 pu:1"), 0);
	cpus_of(&t, 0, m);
	kvcd_topo_order(&t, m, t.os_index[1], order);
	cr_assert_eq(order[0], 1);
	kvcd_topo_order(&t, m, 77, order); /* no such node: fall back to the CPUs */
	cr_assert_eq(order[0], 0);
}

Test(topo, same_package_before_remote_packages)
{
	struct kvcd_topo t;
	uint64_t m[16];
	uint8_t order[KVCD_MAX_NODES];

	/* 2 packages x 2 NUMA nodes each: nodes 0,1 in package 0; nodes 2,3 in package 1 */
	cr_assert_eq(kvcd_topo_load(&t, "pack:2 group:2 [numa] core:2 pu:1"), 0);
	cr_assert_eq(t.nnodes, 4);
	cpus_of(&t, 2, m);
	cr_assert_eq(kvcd_topo_order(&t, m, -1, order), 4);
	cr_assert_eq(order[0], 2);
	cr_assert_eq(order[1], 3, "the sibling in the same package is next");
	cr_assert(order[2] < 2 && order[3] < 2);
}

Test(topo, distance_matrix_orders_the_fallbacks)
{
	struct kvcd_topo t = { .nnodes = 4 };
	uint64_t m[16] = { 0 };
	uint8_t order[KVCD_MAX_NODES];
	static const uint64_t d[4][4] = {
		{ 10, 32, 21, 40 }, { 32, 10, 40, 21 }, { 21, 40, 10, 32 }, { 40, 21, 32, 10 }
	};

	for (unsigned i = 0; i < 4; i++) {
		t.os_index[i] = (int)i;
		t.cpus[i][0] = 0xfull << (4 * i);
		memcpy(t.dist[i], d[i], sizeof(d[i]));
	}
	m[0] = 0x3; /* runs on two CPUs of node 0 */
	kvcd_topo_order(&t, m, -1, order);
	cr_assert_arr_eq(order, ((uint8_t[]){ 0, 2, 1, 3 }), 4);
	m[0] = 0x1f0; /* 4 CPUs on node 1, one on node 2 */
	kvcd_topo_order(&t, m, -1, order);
	cr_assert_arr_eq(order, ((uint8_t[]){ 1, 3, 0, 2 }), 4);
}

/* A GPU's nearest node is its PCI function's numa_node in sysfs, whatever the case of the
 * bus id the driver gives; -1 (or nothing there) is unknown. */
Test(topo, a_gpu_s_node_is_its_pci_function_s)
{
	char root[] = "/tmp/kvcd-sysfs-XXXXXX", dir[160], cmd[200];
	const char *fn[] = { "0000:3b:00.0", "0000:86:00.0" }, *val[] = { "1\n", "-1\n" };

	cr_assert_not_null(mkdtemp(root));
	for (int i = 0; i < 2; i++) {
		FILE *f;

		snprintf(dir, sizeof(dir), "mkdir -p %s/bus/pci/devices/%s", root, fn[i]);
		cr_assert_eq(system(dir), 0);
		snprintf(dir, sizeof(dir), "%s/bus/pci/devices/%s/numa_node", root, fn[i]);
		f = fopen(dir, "w");
		fputs(val[i], f);
		fclose(f);
	}
	cr_assert_eq(kvcd_pci_numa_node(root, "0000:3B:00.0"), 1, "upper case from the driver");
	cr_assert_eq(kvcd_pci_numa_node(root, "0000:86:00.0"), -1, "the platform does not say");
	cr_assert_eq(kvcd_pci_numa_node(root, "0000:af:00.0"), -1, "no such function");
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	cr_assert_eq(system(cmd), 0);
}

/* A GPU client's blocks go to the node nearest its device, on a two-node machine whose GPUs
 * sit on different nodes; a client's own node wins, and a device whose node is unknown leaves
 * it to the client's CPUs. */
Test(topo, gpu_clients_are_placed_by_their_device)
{
	struct kvcd_topo t;
	struct kvcp_gpu_stats g = { .status = KVCP_GPU_READY, .ndev = 3 };
	uint64_t m[16];
	uint8_t order[KVCD_MAX_NODES];

	cr_assert_eq(kvcd_topo_load(&t, "pack:2 [numa] core:4 pu:1"), 0);
	g.dev[0].numa_node = t.os_index[1];
	g.dev[1].numa_node = t.os_index[0];
	g.dev[2].numa_node = -1;
	cpus_of(&t, 0, m); /* the client runs on node 0 */
	kvcd_topo_order(&t, m, kvcd_gpu_node(&g, 1u << 0, -1), order);
	cr_assert_eq(order[0], 1, "device 0's node first");
	kvcd_topo_order(&t, m, kvcd_gpu_node(&g, 1u << 0 | 1u << 1, -1), order);
	cr_assert_eq(order[0], 1, "the first device of the mask decides");
	kvcd_topo_order(&t, m, kvcd_gpu_node(&g, 1u << 1, -1), order);
	cr_assert_eq(order[0], 0);
	cr_assert_eq(kvcd_gpu_node(&g, 1u << 2, -1), -1, "unknown: the CPUs decide");
	kvcd_topo_order(&t, m, kvcd_gpu_node(&g, 1u << 2, -1), order);
	cr_assert_eq(order[0], 0);
	cr_assert_eq(kvcd_gpu_node(&g, 1u << 0, t.os_index[0]), t.os_index[0], "a hint wins");
}
