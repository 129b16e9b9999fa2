/* it_gpu.c - GPU access as a machine without a usable GPU sees it: an attach that asks for GPU
 * staging is refused with -ENODEV and changes nothing, requests that name GPU staging a
 * session does not have are refused, malformed GPU fields are refused, and kvcd goes on
 * serving with every block intact. (tests/gpu_tier.c covers the machine with a GPU.) */
#include "t_util.h"

static struct t_daemon D;

static void up(void)
{
	t_daemon_start(&D, "32M");
}

static void down(void)
{
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exits 0 on SIGTERM");
}

TestSuite(gpu, .init = up, .fini = down, .timeout = 60);

/* Does kvcd serve GPU staging here? Then the refusals below are not what it must do. */
static bool has_gpu_staging(void)
{
	kvc_client *c = t_attach(&D, NULL, 4096);
	struct kvc_stats st;

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	return st.gpu.status == KVC_GPU_READY && strstr(st.gpu.why, " 0 with GPU staging") == NULL;
}

static const struct kvc_layout L = {
	.dtype = KVC_F16, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 16
};

Test(gpu, attach_for_gpu_staging_is_refused_without_a_device)
{
	struct kvc_attach_opts o;
	kvc_client *c = t_attach(&D, "m", 1 << 20), *g = NULL;
	struct kvc_key k = { 1, 2 };
	size_t n = kvc_layout_bytes(&L), size;
	char *stg = kvc_staging(c, &size);
	struct kvc_layout back;

	if (has_gpu_staging()) {
		kvc_detach(c);
		cr_assert_eq(t_daemon_down(&D), 0); /* a skipped test runs no .fini */
		cr_skip_test("skipped: this kvcd serves GPU staging (tests/gpu_tier.c)");
	}
	t_fill(stg, n, 7);
	cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	kvc_attach_opts_init(&o);
	o.socket = D.sock;
	o.ns = "m";
	o.gpu = 1;
	cr_assert_eq(kvc_attach(&o, &g), -ENODEV, "no device can share memory");
	cr_assert_null(g);
	o.gpu_mask = 1u << 3;
	cr_assert_eq(kvc_attach(&o, &g), -ENODEV, "nor device 3");
	/* nothing stored was lost, and the plain client goes on */
	memset(stg + n, 0, n);
	cr_assert_eq(kvc_fetch(c, &k, n, n, &back), 0);
	cr_assert_eq(memcmp(stg, stg + n, n), 0);
	cr_assert_eq(kvc_gpu_staging(c, 0, &size), 0, "no GPU staging");
	cr_assert_eq(size, 0);
	cr_assert_eq(kvc_gpu_index(c, 0), -ENODEV);
	cr_assert_eq(kvc_store_gpu(c, 0, &k, &L, 0), -ENODEV);
	struct kvc_req r = {
		.op = KVC_OP_STORE, .flags = KVC_REQ_GPU, .key = k, .layout = L, .len = n
	};

	cr_assert_eq(kvc_req_parent(c, &r, &k), -ENODEV, "no GPU staging for its parent");
	cr_assert_eq(r.flags, KVC_REQ_GPU, "the request is left as it was");
	cr_assert_eq(kvc_fetch_gpu(c, 0, &k, 0, n, &back), -ENODEV);
	kvc_detach(c);
}

/* Requests that name GPU staging: checked by kvcd, whatever the library would send. */
Test(gpu, gpu_requests_a_session_cannot_make_are_refused)
{
	struct kvcp_attach_req req = kvcp_raw_request("raw");
	struct kvcp_raw r;
	struct kvcp_cqe cqe;
	const struct kvcp_layout l = {
		.dtype = KVCP_F16, .layers = 2, .kv_heads = 2, .head_dim = 64, .tokens = 16
	};
	uint64_t n = kvcp_layout_bytes(&l);
	struct {
		struct kvcp_sqe sqe;
		int want;
	} cases[] = {
		{ { .opcode = KVCP_OP_STORE, .flags = KVCP_SQE_F_GPU, .len = n, .layout = l },
		  -ENODEV },
		{ { .opcode = KVCP_OP_FETCH, .flags = KVCP_SQE_F_GPU, .len = n }, -ENODEV },
		{ { .opcode = KVCP_OP_STORE,
		    .flags = KVCP_SQE_F_GPU,
		    .gpu = 15,
		    .len = n,
		    .layout = l },
		  -ENODEV },
		{ { .opcode = KVCP_OP_NOP, .flags = KVCP_SQE_F_GPU }, -EINVAL },
		{ { .opcode = KVCP_OP_LOOKUP, .flags = KVCP_SQE_F_GPU, .len = 16 }, -EINVAL },
		{ { .opcode = KVCP_OP_STORE,
		    .flags = KVCP_SQE_F_GPU | KVCP_SQE_F_SCORES,
		    .len = n + 64,
		    .layout = l },
		  -EINVAL },
		{ { .opcode = KVCP_OP_FETCH, .gpu = 1, .len = n }, -EBADMSG },
		{ { .opcode = KVCP_OP_FETCH, .flags = KVCP_SQE_F_GPU | KVCP_SQE_F_PARENT, .len = n },
		  -EINVAL },
		{ { .opcode = KVCP_OP_STORE,
		    .flags = KVCP_SQE_F_GPU | KVCP_SQE_F_PARENT,
		    .len = n + 16,
		    .layout = l },
		  -ENODEV },
	};

	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cases[i].sqe.user_data = i + 1;
		cr_assert_eq(t_raw_call(&r, &cases[i].sqe, &cqe), 0);
		cr_assert_eq(cqe.user_data, i + 1);
		cr_assert_eq(cqe.res, cases[i].want, "case %zu: %d, want %d", i, cqe.res,
			     cases[i].want);
	}
	kvcp_raw_close(&r);
	/* and kvcd still serves */
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_nop(c), 0);
	kvc_detach(c);
}

/* The attach request's GPU fields: only with the GPU flag, and refused on this machine. */
Test(gpu, attach_requests_with_gpu_fields)
{
	struct kvcp_attach_req req = kvcp_raw_request("raw");
	struct kvcp_raw r;

	req.gpu_mask = 1;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -EBADMSG, "a mask without the flag");
	close(r.sock);
	req.gpu_mask = 0;
	req.gpu_staging_size = 1 << 20;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -EBADMSG, "a size without the flag");
	close(r.sock);
	req.flags = 0x100; /* neither GPU nor PHASE */
	req.gpu_staging_size = 0;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -EBADMSG, "an unknown flag");
	close(r.sock);
	if (has_gpu_staging()) {
		cr_assert_eq(t_daemon_down(&D), 0); /* a skipped test runs no .fini */
		cr_skip_test("skipped: this kvcd serves GPU staging (tests/gpu_tier.c)");
	}
	req.flags = KVCP_ATTACH_F_GPU;
	cr_assert_eq(kvcp_raw_attach(D.sock, &req, &r), -ENODEV, "no device");
	close(r.sock);
}

/* [gpu] staging_size and staging_max are read, and contradicting them stops kvcd. */
Test(gpu, gpu_staging_settings)
{
	char out[512];

	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);
	t_daemon_start_conf(&D, "[gpu]\nstaging_size = 128M\nstaging_max = 1G\n");
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_nop(c), 0);
	kvc_detach(c);
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);
	char dir[] = "/tmp/kvcd-gpuconf-XXXXXX";

	cr_assert_not_null(mkdtemp(dir));
	cr_assert_neq(
		t_sh(out, sizeof(out),
		     "printf '[gpu]\\nstaging_size = 2G\\nstaging_max = 1G\\n' > %s/bad.conf && "
		     "%s --foreground --socket %s/k.sock --pool-size 8M --config %s/bad.conf "
		     "2>&1",
		     dir, t_kvcd_bin(), dir, dir),
		0, "%s", out);
	cr_assert_not_null(strstr(out, "staging_max"), "%s", out);
	t_sh(out, sizeof(out), "rm -rf %s", dir);
	D.dir[0] = '\0'; /* a fresh directory for the suite's own stop */
	t_daemon_start(&D, "32M");
}

/* The toolkit's stub libcuda (every entry point, each failing) stands in for a driver that
 * loads but cannot start: kvcd resolves every symbol it needs from it, says the driver
 * failed and why, refuses GPU access and serves from host memory. */
Test(gpu, a_driver_that_fails_is_reported_and_kvcd_serves)
{
	const char *home = getenv("CUDA_HOME") ? getenv("CUDA_HOME") : "/usr/local/cuda";
	char stub[256], dir[] = "/tmp/kvcd-stub-XXXXXX", link[300], out[256];
	struct kvc_attach_opts o;
	struct kvc_stats st;
	kvc_client *c, *g = NULL;

	snprintf(stub, sizeof(stub), "%s/lib64/stubs/libcuda.so", home);
	if (access(stub, R_OK)) {
		cr_assert_eq(t_daemon_down(&D), 0); /* a skipped test runs no .fini */
		cr_skip_test("skipped: no CUDA toolkit stub at %s", stub);
	}
	cr_assert_not_null(mkdtemp(dir));
	snprintf(link, sizeof(link), "%s/libcuda.so.1", dir);
	cr_assert_eq(symlink(stub, link), 0);
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);
	D.dir[0] = '\0';
	setenv("LD_LIBRARY_PATH", dir, 1); /* read by kvcd's loader, not by this process's */
	t_daemon_start(&D, "32M");
	unsetenv("LD_LIBRARY_PATH");
	c = t_attach(&D, NULL, 4096);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	cr_assert_eq(st.gpu.status, KVC_GPU_DRIVER_ERROR, "%d: %s", st.gpu.status, st.gpu.why);
	cr_assert_not_null(strstr(st.gpu.why, "cuInit"), "%s", st.gpu.why);
	kvc_attach_opts_init(&o);
	o.socket = D.sock;
	o.gpu = 1;
	cr_assert_eq(kvc_attach(&o, &g), -ENODEV);
	cr_assert_eq(kvc_nop(c), 0);
	kvc_detach(c);
	t_sh(out, sizeof(out), "rm -rf %s", dir);
}

/* [gpu] pool_size where no device can hold it: kvcd says so in one line and serves from host
 * memory, every GPU pool reported empty; a size no device could use is refused at start. */
Test(gpu, a_gpu_pool_without_a_device_is_said_and_kvcd_serves)
{
	const char *args[] = { "--pool-size", "32M", "--gpu-pool-size", "1G", NULL };
	const char *tiny[] = { "--pool-size", "32M", "--gpu-pool-size", "1M", NULL };
	const char *junk[] = { "--pool-size", "32M", "--gpu-pool-size", "lots", NULL };
	char out[8192];
	struct kvc_stats st;
	struct kvc_key k = { 3, 4 };
	struct kvc_layout back;
	kvc_client *c;
	size_t n = kvc_layout_bytes(&L), size;

	if (has_gpu_staging()) {
		cr_assert_eq(t_daemon_down(&D), 0); /* a skipped test runs no .fini */
		cr_skip_test("skipped: this kvcd has a device (tests/gpu_tier.c)");
	}
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);
	D.dir[0] = '\0';
	cr_assert_eq(t_daemon_start_args(&D, args), 0);
	c = t_attach(&D, NULL, 1 << 20);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	for (unsigned i = 0; i < 16; i++)
		cr_assert_eq(st.gpu_pool[i].pool_bytes, 0);
	char *stg = kvc_staging(c, &size);

	t_fill(stg, n, 9);
	cr_assert_eq(kvc_store(c, &k, &L, 0), 0);
	memset(stg + n, 0, n);
	cr_assert_eq(kvc_fetch(c, &k, n, n, &back), 0);
	cr_assert_eq(memcmp(stg, stg + n, n), 0, "served from host memory");
	kvc_detach(c);
	t_sh(out, sizeof(out), "cat %s", D.log);
	cr_assert_not_null(strstr(out, "no GPU pool"), "%s", out);
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);

	D.dir[0] = '\0';
	cr_assert_eq(t_daemon_start_args(&D, tiny), 1002, "below a device's granularity");
	t_sh(out, sizeof(out), "cat %s", D.log);
	cr_assert_not_null(strstr(out, "pool_size"), "%s", out);
	t_daemon_cleanup(&D);
	D.dir[0] = '\0';
	cr_assert_eq(t_daemon_start_args(&D, junk), 1002);
	t_sh(out, sizeof(out), "cat %s", D.log);
	cr_assert_not_null(strstr(out, "--gpu-pool-size lots"), "%s", out);
	t_daemon_cleanup(&D);
	D.dir[0] = '\0';
	t_daemon_start(&D, "32M");
}
