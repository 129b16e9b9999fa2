/* unit_abi.c - kvc.h restates the protocol structs an engine sees (proto/kvcp.h stays
 * private to the library and the daemon): every shared field must sit at the same offset
 * with the same size, and every shared constant must have the same value. Sizes alone
 * would miss two fields swapped. */
#include <stddef.h>

#include "t_util.h"

#define SAME(a, b, f)                                                                            \
	do {                                                                                     \
		cr_expect_eq(offsetof(struct a, f), offsetof(struct b, f), #a "." #f " offset"); \
		cr_expect_eq(sizeof(((struct a *)0)->f), sizeof(((struct b *)0)->f),             \
			     #a "." #f " size");                                                 \
	} while (0)
#define SIZE(a, b) cr_expect_eq(sizeof(struct a), sizeof(struct b), #a " size")

Test(abi, keys_layouts_and_fetch_forms_match_the_protocol)
{
	SIZE(kvc_key, kvcp_key);
	SAME(kvc_key, kvcp_key, hi);
	SAME(kvc_key, kvcp_key, lo);
	SIZE(kvc_layout, kvcp_layout);
	SAME(kvc_layout, kvcp_layout, dtype);
	SAME(kvc_layout, kvcp_layout, codec);
	SAME(kvc_layout, kvcp_layout, layers);
	SAME(kvc_layout, kvcp_layout, kv_heads);
	SAME(kvc_layout, kvcp_layout, head_dim);
	SAME(kvc_layout, kvcp_layout, tokens);
	SAME(kvc_layout, kvcp_layout, reserved);
	SIZE(kvc_aux, kvcp_aux);
	SAME(kvc_aux, kvcp_aux, magic);
	SAME(kvc_aux, kvcp_aux, what);
	SAME(kvc_aux, kvcp_aux, q_heads);
	SAME(kvc_aux, kvcp_aux, window);
	SAME(kvc_aux, kvcp_aux, q_pos);
	SAME(kvc_aux, kvcp_aux, reserved);
	SIZE(kvc_sparse, kvcp_sparse);
	SAME(kvc_sparse, kvcp_sparse, magic);
	SAME(kvc_sparse, kvcp_sparse, total);
	SAME(kvc_sparse, kvcp_sparse, tokens);
	SAME(kvc_sparse, kvcp_sparse, reserved);
	SIZE(kvc_select_hit, kvcp_select_hit);
	SAME(kvc_select_hit, kvcp_select_hit, index);
	SAME(kvc_select_hit, kvcp_select_hit, score);
}

Test(abi, introspection_structs_match_the_protocol)
{
	SIZE(kvc_stats, kvcp_stats);
	SAME(kvc_stats, kvcp_stats, gpu);
	cr_assert_eq(sizeof(((struct kvc_stats *)0)->gpu), sizeof(struct kvcp_gpu_stats));
	cr_assert_eq(KVC_GPU_READY, KVCP_GPU_READY);
	SAME(kvc_stats, kvcp_stats, nnodes);
	SAME(kvc_stats, kvcp_stats, clients);
	SAME(kvc_stats, kvcp_stats, boot_token);
	SAME(kvc_stats, kvcp_stats, uptime_ms);
	SAME(kvc_stats, kvcp_stats, blocks);
	SAME(kvc_stats, kvcp_stats, bytes_used);
	SAME(kvc_stats, kvcp_stats, bytes_free);
	SAME(kvc_stats, kvcp_stats, bytes_in);
	SAME(kvc_stats, kvcp_stats, bytes_stored);
	SAME(kvc_stats, kvcp_stats, hits);
	SAME(kvc_stats, kvcp_stats, misses);
	SAME(kvc_stats, kvcp_stats, evictions);
	SAME(kvc_stats, kvcp_stats, pinned);
	SAME(kvc_stats, kvcp_stats, bad_requests);
	SAME(kvc_stats, kvcp_stats, checksum_failures);
	SAME(kvc_stats, kvcp_stats, metadata_bytes);
	SAME(kvc_stats, kvcp_stats, ns_ext[0].hits);
	SAME(kvc_stats, kvcp_stats, ns_ext[31].charged);
	SAME(kvc_stats, kvcp_stats, op_hist[12][63]);
	SAME(kvc_stats, kvcp_stats, node);
	SAME(kvc_stats, kvcp_stats, op);
	SAME(kvc_stats, kvcp_stats, nns);
	SAME(kvc_stats, kvcp_stats, ns);
	/* the nested structs, field by field, through element 0 */
	SAME(kvc_stats, kvcp_stats, node[0].node);
	SAME(kvc_stats, kvcp_stats, node[0].hugepages);
	SAME(kvc_stats, kvcp_stats, node[0].bytes_total);
	SAME(kvc_stats, kvcp_stats, node[0].bytes_used);
	SAME(kvc_stats, kvcp_stats, node[0].blocks);
	SAME(kvc_stats, kvcp_stats, op[0].count);
	SAME(kvc_stats, kvcp_stats, op[0].errors);
	SAME(kvc_stats, kvcp_stats, op[0].p50_ns);
	SAME(kvc_stats, kvcp_stats, op[0].p99_ns);
	SAME(kvc_stats, kvcp_stats, op[0].p999_ns);
	SAME(kvc_stats, kvcp_stats, ns[0].name);
	SAME(kvc_stats, kvcp_stats, ns[0].policy);
	SAME(kvc_stats, kvcp_stats, ns[0].blocks);
	SAME(kvc_stats, kvcp_stats, ns[0].bytes_in);
	SAME(kvc_stats, kvcp_stats, ns[0].bytes_stored);
	SAME(kvc_stats, kvcp_stats, ns[0].fallbacks);
	cr_expect_eq(sizeof(((struct kvc_stats *)0)->op) / sizeof(struct kvc_op_stats),
		     KVCP_OP_STATS_N, "kvc_stats.op has an entry per opcode of 2.3");
	cr_expect_eq(sizeof(((struct kvc_stats *)0)->op_more) / sizeof(struct kvc_op_stats),
		     KVCP_OP_MORE, "and op_more one per later opcode");
	cr_expect_leq(KVCP_OP__COUNT, KVCP_OP_STATS_N + KVCP_OP_MORE);
	SAME(kvc_stats, kvcp_stats, op_more);
	SAME(kvc_stats, kvcp_stats, recompress.blocks);
	SAME(kvc_stats, kvcp_stats, recompress.bytes_after);
	SAME(kvc_stats, kvcp_stats, ns_bases[0].count);
	SAME(kvc_stats, kvcp_stats, ns_bases[0].newest);
	SAME(kvc_stats, kvcp_stats, ns_bases[31].bytes);
	SAME(kvc_stats, kvcp_stats, gpu_pool[0].pool_bytes);
	SAME(kvc_stats, kvcp_stats, gpu_pool[0].no_room);
	SAME(kvc_stats, kvcp_stats, gpu_pool[15].demotions);
	SIZE(kvc_block_info, kvcp_list_ent);
	SAME(kvc_block_info, kvcp_list_ent, key);
	SAME(kvc_block_info, kvcp_list_ent, layout);
	SAME(kvc_block_info, kvcp_list_ent, bytes);
	SAME(kvc_block_info, kvcp_list_ent, node);
	SAME(kvc_block_info, kvcp_list_ent, pins);
	SAME(kvc_block_info, kvcp_list_ent, hits);
	SIZE(kvc_client_info, kvcp_client_ent);
	SAME(kvc_client_info, kvcp_client_ent, client_id);
	SAME(kvc_client_info, kvcp_client_ent, pid);
	SAME(kvc_client_info, kvcp_client_ent, uid);
	SAME(kvc_client_info, kvcp_client_ent, gid);
	SAME(kvc_client_info, kvcp_client_ent, node);
	SAME(kvc_client_info, kvcp_client_ent, worker);
	SAME(kvc_client_info, kvcp_client_ent, requests);
	SAME(kvc_client_info, kvcp_client_ent, bad_requests);
	SAME(kvc_client_info, kvcp_client_ent, ns);
}

Test(abi, constants_mean_the_same_on_both_sides)
{
	cr_expect_eq(KVC_F32, KVCP_F32);
	cr_expect_eq(KVC_F16, KVCP_F16);
	cr_expect_eq(KVC_BF16, KVCP_BF16);
	cr_expect_eq(KVC_CODEC_NONE, KVCP_CODEC_NONE);
	cr_expect_eq(KVC_CODEC_INT, KVCP_CODEC_INT);
	cr_expect_eq(KVC_CODEC_FP8, KVCP_CODEC_FP8);
	cr_expect_eq(KVC_CODEC_KIVI, KVCP_CODEC_KIVI);
	cr_expect_eq(KVC_CODEC_SPARSE, KVCP_CODEC_SPARSE);
	cr_expect_eq(KVC_SPARSE_MAGIC, KVCP_SPARSE_MAGIC);
	cr_expect_eq(KVC_AUX_MAGIC, KVCP_AUX_MAGIC);
	cr_expect_eq(KVC_AUX_ATTN, KVCP_AUX_ATTN);
	cr_expect_eq(KVC_AUX_QUERIES, KVCP_AUX_QUERIES);
	cr_expect_eq(KVC_REQ_SCORES, KVCP_SQE_F_SCORES);
	cr_expect_eq(KVC_REQ_AUX, KVCP_SQE_F_AUX);
	cr_expect_eq(KVC_MAX_NODES, KVCP_MAX_NODES);
	cr_expect_eq(KVC_OP_NOP, KVCP_OP_NOP);
	cr_expect_eq(KVC_OP_STORE, KVCP_OP_STORE);
	cr_expect_eq(KVC_OP_FETCH, KVCP_OP_FETCH);
	cr_expect_eq(KVC_OP_LOOKUP, KVCP_OP_LOOKUP);
	cr_expect_eq(KVC_OP_DELETE, KVCP_OP_DELETE);
	cr_expect_eq(KVC_OP_PIN, KVCP_OP_PIN);
	cr_expect_eq(KVC_OP_UNPIN, KVCP_OP_UNPIN);
	cr_expect_eq(KVC_POLICY_NAMESPACE, KVCP_POLICY_NS);
	cr_expect_eq(KVC_VERSION_MAJOR << 16 | KVC_VERSION_MINOR << 8 | KVC_VERSION_PATCH,
		     kvc_version(), "the header and the library are the same release");
}
