/* it_bench.c - kvcbench's scenarios run end to end against a real kvcd and real peers (a
 * private redis-server, the minimal socket server), small enough to check what they do, not
 * how fast: every byte comes back, nothing is left behind, a missing peer is an error. */
#include <signal.h>
#include <sys/prctl.h>

#include "t_util.h"

static struct t_daemon D;

static void up(void)
{
	t_daemon_start(&D, "64M");
}

static void down(void)
{
	t_daemon_cleanup(&D);
}

TestSuite(it_bench, .init = up, .fini = down, .timeout = 120);

/* A private redis-server on a UNIX socket in the daemon's directory; it dies with this test
 * process even if the test crashes (PR_SET_PDEATHSIG). */
static pid_t redis_start(char *path, size_t len)
{
	pid_t parent = getpid(), pid;

	snprintf(path, len, "%s/redis.sock", D.dir);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		freopen("/dev/null", "w", stdout);
		execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", path,
		       "--save", "", "--appendonly", "no", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 200 && access(path, F_OK); i++)
		t_sleep_ms(10);
	cr_assert_eq(access(path, F_OK), 0, "redis-server did not start (is it installed?)");
	return pid;
}

static void redis_stop(pid_t pid)
{
	kill(pid, SIGTERM);
	waitpid(pid, NULL, 0);
}

static uint64_t stat_blocks(void)
{
	char out[8192], *p;

	cr_assert_eq(t_kvcctl(&D, "stats --json", out, sizeof(out)), 0, "%s", out);
	p = strstr(out, "\"blocks\":");
	cr_assert_not_null(p, "%s", out);
	return strtoull(p + 9, NULL, 10);
}

Test(it_bench, throughput_moves_every_byte_through_kvcd_redis_and_the_socket_server)
{
	char rs[160], args[512], out[4096];
	pid_t r = redis_start(rs, sizeof(rs));

	snprintf(args, sizeof(args),
		 "throughput --block-size 64K --iters 8 --procs 2 --redis %s "
		 "--json",
		 rs);
	cr_assert_eq(t_tool(&D, "kvcbench", args, out, sizeof(out)), 0, "%s", out);
	cr_expect_not_null(strstr(out, "\"ratio_vs_redis\""), "%s", out);
	cr_expect_not_null(strstr(out, "\"ratio_vs_socket\""), "%s", out);
	cr_expect_not_null(strstr(out, "\"procs\": 2"), "%s", out);
	snprintf(args, sizeof(args), "nop --count 2000 --redis %s --json", rs);
	cr_assert_eq(t_tool(&D, "kvcbench", args, out, sizeof(out)), 0, "%s", out);
	cr_expect_not_null(strstr(out, "\"p50_redis_over_kvcd\""), "%s", out);
	cr_expect_not_null(strstr(out, "\"p50_socket_over_kvcd\""), "%s", out);
	redis_stop(r);
	cr_expect_eq(stat_blocks(), 0, "the benchmark deletes what it stored");
}

/* The adaptive client's runs: NOP without peers, and STORE+FETCH that names its client. */
Test(it_bench, adaptive_clients_are_measured_as_such)
{
	char out[4096];

	cr_assert_eq(t_tool(&D, "kvcbench", "nop --count 2000 --adaptive --no-peers --json", out,
			    sizeof(out)),
		     0, "%s", out);
	cr_expect_not_null(strstr(out, "\"mode\": \"adaptive\""), "%s", out);
	cr_expect_not_null(strstr(out, "\"p50_over_floor\""), "%s", out);
	cr_expect_null(strstr(out, "socket"), "no peers: %s", out);
	cr_assert_eq(t_tool(&D, "kvcbench",
			    "throughput --block-size 64K --iters 8 --adaptive --no-peers --json",
			    out, sizeof(out)),
		     0, "%s", out);
	cr_expect_not_null(strstr(out, "\"client\": \"adaptive\""), "%s", out);
	cr_assert_eq(t_tool(&D, "kvcbench", "nop --count 500 --sleep --json", out, sizeof(out)), 0,
		     "%s", out);
	cr_expect_not_null(strstr(out, "\"mode\": \"sleep\""), "%s", out);
	cr_expect_not_null(strstr(out, "\"socket\""), "%s", out);
	cr_expect_eq(stat_blocks(), 0);
}

Test(it_bench, a_missing_redis_is_an_error_not_a_result)
{
	char args[256], out[4096];

	snprintf(args, sizeof(args), "throughput --block-size 16K --iters 2 --redis %s/none.sock",
		 D.dir);
	cr_expect_neq(t_tool(&D, "kvcbench", args, out, sizeof(out)), 0, "%s", out);
	cr_expect_not_null(strstr(out, "redis"), "%s", out);
	cr_expect_null(strstr(out, "store_gbps"), "no figures after a failure: %s", out);
}

Test(it_bench, index_reports_each_size_and_leaves_nothing_behind)
{
	char args[128], out[4096];

	snprintf(args, sizeof(args), "index --blocks 10000 --count 500 --pid %d --json",
		 (int)D.pid);
	cr_assert_eq(t_tool(&D, "kvcbench", args, out, sizeof(out)), 0, "%s", out);
	cr_expect_not_null(strstr(out, "\"blocks\": 1000,"), "%s", out);
	cr_expect_not_null(strstr(out, "\"blocks\": 10000,"), "%s", out);
	cr_expect_null(strstr(out, "\"blocks\": 100000,"), "%s", out);
	cr_expect_not_null(strstr(out, "\"metadata_bytes_per_block\""), "%s", out);
	cr_expect_eq(stat_blocks(), 0);
}

/* The workload scenario on a small generated trace: every replay completes without errors
 * and with every kvcd it started gone, Belady bounds everything that replays it, and a
 * compressing namespace holds more blocks in the same pool. */
Test(it_bench, workload_replays_a_trace_on_kvcd_and_redis)
{
	char args[512], bin[256], *out = malloc(1 << 16);
	double belady = 0, lru = 0, hit = 0, int8_hit = 0, compression = 0;
	const char *at;

	snprintf(bin, sizeof(bin), "%s", t_kvcd_bin());
	snprintf(args, sizeof(args),
		 "workload --kvcd %s --trace %s/trace.jsonl --seed 5 --requests 300 "
		 "--fraction 0.1 --procs 1 --json",
		 bin, D.dir);
	cr_assert_eq(t_tool(&D, "kvcbench", args, out, 1 << 16), 0, "%s", out);
	cr_assert_eq(access(strcat(strcpy(args, D.dir), "/trace.jsonl"), R_OK), 0,
		     "the trace is kept for others to replay");
	cr_assert_not_null(at = strstr(out, "\"belady\": {\"hit_rate\": "), "%s", out);
	belady = strtod(at + 24, NULL);
	cr_assert_not_null(at = strstr(out, "\"lru\": {\"hit_rate\": "), "%s", out);
	lru = strtod(at + 21, NULL);
	cr_assert_not_null(at = strstr(out, "\"name\": \"kvcd\""), "%s", out);
	cr_assert_not_null(at = strstr(at, "\"hit_rate\": "));
	hit = strtod(at + 12, NULL);
	cr_assert_not_null(at = strstr(out, "\"name\": \"kvcd int8\""), "%s", out);
	cr_assert_not_null(at = strstr(at, "\"compression\": "));
	compression = strtod(at + 15, NULL);
	cr_assert_not_null(at = strstr(at, "\"hit_rate\": "));
	int8_hit = strtod(at + 12, NULL);
	cr_assert(belady > 0 && belady >= lru && belady >= hit, "Belady %.4f, LRU %.4f, kvcd %.4f",
		  belady, lru, hit);
	cr_assert_gt(hit, 0, "kvcd hits: %s", out);
	cr_assert_gt(compression, 1.5, "int8 compresses");
	cr_assert_geq(int8_hit, hit, "more blocks fit, no fewer hits: %.4f %.4f", int8_hit, hit);
	cr_assert_null(strstr(out, "\"failed\": 1"), "%s", out);
	for (at = strstr(out, "\"errors\": "); at; at = strstr(at + 1, "\"errors\": "))
		cr_assert_eq(strtoul(at + 10, NULL, 10), 0,
			     "one process: no FETCH misses a LOOKUP hit");
	free(out);
}
