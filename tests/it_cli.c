/* it_cli.c - kvcctl cannot hurt: every misuse is an error that names what is wrong and leaves
 * the cache as it was; attach failures say which of three things is wrong; and the metrics
 * kvcd serves on HTTP (and kvcctl prints) pass promtool. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>

#include "t_util.h"

static struct t_daemon D;

static void cleanup(void)
{
	t_daemon_cleanup(&D);
}

TestSuite(cli, .fini = cleanup, .timeout = 60);

static uid_t nobody(void)
{
	struct passwd *pw = getpwnam("nobody");

	return pw ? pw->pw_uid : 65534;
}

static uint64_t blocks(void)
{
	struct kvc_stats st;
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	return st.blocks;
}

Test(cli, misuse_is_an_error_and_changes_nothing)
{
	static const char *const bad[] = {
		"evict abc",	    "evict -5",	     "evict",	   "evict 0",  "evict 1G --all",
		"evict 12Q",	    "stats --jsn",   "bogus",	   "ls extra", "clients --all",
		"top --interval 0", "top --count x", "ping --json"
	};
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 16
	};
	char out[4096];

	memset(&D, 0, sizeof(D));
	t_daemon_start(&D, "64M");
	kvc_client *c = t_attach(&D, NULL, 1u << 20);

	for (uint64_t i = 0; i < 10; i++) {
		struct kvc_key k = { i, 9 };

		cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	}
	kvc_detach(c);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc = t_kvcctl(&D, bad[i], out, sizeof(out));

		cr_assert_eq(rc, 2, "'kvcctl %s' is an error (exit %d): %s", bad[i], rc, out);
		cr_assert(strstr(out, "kvcctl"), "and says so: %s", out);
		cr_assert_eq(blocks(), 10, "'kvcctl %s' changed nothing", bad[i]);
	}
	cr_assert_eq(t_kvcctl(&D, "evict abc", out, sizeof(out)), 2);
	cr_assert_not_null(strstr(out, "'abc'"), "names the argument: %s", out);
	cr_assert_eq(t_kvcctl(&D, "evict 1M", out, sizeof(out)), 0, "%s", out);
	cr_assert_eq(blocks(), 10, "1 MiB was free already: nothing to evict");
	cr_assert_eq(t_kvcctl(&D, "stats", out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "hit ratio"), "%s", out);
	cr_assert_eq(t_kvcctl(&D, "ls", out, sizeof(out)), 0);
	cr_assert_not_null(strstr(out, "dtype"), "a header: %s", out);
	cr_assert_not_null(strstr(out, " f16 "), "dtype names: %s", out);
	cr_assert_eq(t_kvcctl(&D, "top --interval 0.1 --count 2", out, sizeof(out)), 0, "%s", out);
	cr_assert_not_null(strstr(out, "hit ratio"), "%s", out);
	cr_assert_eq(t_kvcctl(&D, "--version", out, sizeof(out)), 0, "%s", out);
	cr_assert_not_null(strstr(out, "kvcd " KVC_VERSION_STRING), "%s", out);
	cr_assert_eq(t_kvcctl(&D, "evict --all", out, sizeof(out)), 0, "%s", out);
	cr_assert_eq(blocks(), 0, "--all empties the cache");
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* Run kvcctl as nobody; its output in @out. */
static int kvcctl_as_nobody(const char *args, char *out, size_t len)
{
	char bin[256], cmd[1024];
	FILE *f;
	size_t n;
	int st;

	snprintf(bin, sizeof(bin), "%s", t_kvcd_bin());
	snprintf(cmd, sizeof(cmd), "setpriv --reuid=%u --regid=%u --clear-groups %s/kvcctl %s 2>&1",
		 nobody(), nobody(), dirname(bin), args);
	f = popen(cmd, "r");
	n = fread(out, 1, len - 1, f);
	out[n] = '\0';
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(cli, attach_errors_say_what_is_wrong)
{
	char out[2048], args[256];

	if (geteuid() != 0)
		cr_skip_test("needs root to act as another uid");
	memset(&D, 0, sizeof(D));
	t_daemon_start_conf(&D, "[kvcd]\nsocket_mode = 0600\n");
	snprintf(args, sizeof(args), "--socket %s/none.sock ping", D.dir);
	cr_assert_eq(kvcctl_as_nobody(args, out, sizeof(out)), 1);
	cr_assert_not_null(strstr(out, "no kvcd at"), "%s", out);
	snprintf(args, sizeof(args), "--socket %s ping", D.sock);
	cr_assert_eq(kvcctl_as_nobody(args, out, sizeof(out)), 1);
	cr_assert_not_null(strstr(out, "permission denied on"), "%s", out);
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);
	memset(&D, 0, sizeof(D));
	t_daemon_start_conf(&D, "[kvcd]\nsocket_mode = 0666\n[namespace secret]\nallow_uids = 0\n");
	snprintf(args, sizeof(args), "--socket %s --ns secret ping", D.sock);
	cr_assert_eq(kvcctl_as_nobody(args, out, sizeof(out)), 1);
	cr_assert_not_null(strstr(out, "namespace 'secret' does not allow uid"), "%s", out);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* A free TCP port on loopback. */
static unsigned free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int s = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(getsockname(s, (struct sockaddr *)&sa, &len), 0);
	close(s);
	return ntohs(sa.sin_port);
}

/* GET @path from 127.0.0.1:@port; the whole response (headers and body) into @out. */
static size_t http_get(unsigned port, const char *path, char *out, size_t len)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	char req[256];
	size_t n = 0;
	ssize_t r;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	cr_assert_eq(connect(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
	cr_assert_eq(write(s, req, strlen(req)), (ssize_t)strlen(req));
	while (n + 1 < len && (r = read(s, out + n, len - 1 - n)) > 0)
		n += (size_t)r;
	out[n] = '\0';
	close(s);
	return n;
}

/* Does promtool accept @text? (Skipped without promtool: make deps installs it.) */
static void promtool_ok(const char *text)
{
	char path[160], cmd[256], out[4096] = "";
	FILE *f;
	int st;

	snprintf(path, sizeof(path), "%s/metrics.txt", D.dir);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
	f = popen(cmd, "r");
	out[fread(out, 1, sizeof(out) - 1, f)] = '\0';
	st = pclose(f);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "promtool: %s", out);
}

Test(cli, metrics_over_http_pass_promtool)
{
	static char resp[1 << 20], text[1 << 20];
	struct kvc_layout l = {
		.dtype = KVC_F16, .layers = 1, .kv_heads = 1, .head_dim = 64, .tokens = 16
	};
	struct kvc_key k = { 1, 1 };
	char conf[128];
	unsigned port = free_port();

	if (system("command -v promtool >/dev/null"))
		cr_skip_test("promtool is not installed (make deps installs it)");
	snprintf(conf, sizeof(conf), "[metrics]\nlisten = 127.0.0.1:%u\n", port);
	memset(&D, 0, sizeof(D));
	t_daemon_start_conf(&D, conf);
	kvc_client *c = t_attach(&D, "llama-8b", 1u << 20);

	cr_assert_eq(kvc_store(c, &k, &l, 0), 0);
	cr_assert_eq(kvc_fetch(c, &k, 0, 1u << 20, NULL), 0);
	http_get(port, "/metrics", resp, sizeof(resp));
	cr_assert_not_null(strstr(resp, "200 OK"), "%.200s", resp);
	cr_assert_not_null(strstr(resp, "text/plain; version=0.0.4"), "%.400s", resp);
	char *body = strstr(resp, "\r\n\r\n");

	cr_assert_not_null(body);
	promtool_ok(body + 4);
	cr_assert_not_null(strstr(body, "\nkvcd_blocks 1\n"), "%s", body);
	cr_assert_not_null(strstr(body, "kvcd_namespace_hits_total{namespace=\"llama-8b\"} 1\n"));
	cr_assert_not_null(strstr(body, "kvcd_request_duration_seconds_count{op=\"fetch\"} 1\n"));
	http_get(port, "/", resp, sizeof(resp));
	cr_assert_not_null(strstr(resp, "404"), "%.200s", resp);
	cr_assert_eq(t_kvcctl(&D, "stats --prometheus", text, sizeof(text)), 0);
	promtool_ok(text);
	cr_assert_not_null(strstr(text, "kvcd_namespace_blocks{namespace=\"llama-8b\"} 1\n"));
	kvc_detach(c);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

static bool log_has(const char *what)
{
	char buf[16384] = { 0 };
	FILE *f = fopen(D.log, "r");
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);

	fclose(f);
	buf[n] = '\0';
	return strstr(buf, what) != NULL;
}

/* SIGHUP reloads the configuration: an ACL changes live; what cannot change is named and kept;
 * a file that does not load changes nothing and kvcd serves on; --pidfile holds the pid. */
Test(cli, sighup_reloads_the_configuration)
{
	char conf[160], pidfile[160], args[256], out[2048];
	const char *argv[] = { "--config", conf, "--pool-size", "64M", "--pidfile", pidfile, NULL };
	FILE *f;
	int pid = 0;

	if (geteuid() != 0)
		cr_skip_test("needs root to act as another uid");
	memset(&D, 0, sizeof(D));
	t_daemon_dir(&D, conf, sizeof(conf));
	snprintf(pidfile, sizeof(pidfile), "%s/kvcd.pid", D.dir);
	write_file(conf, "[kvcd]\nsocket_mode = 0666\n[namespace secret]\nallow_uids = 0\n");
	cr_assert_eq(t_daemon_start_args(&D, argv), 0);
	f = fopen(pidfile, "r");
	cr_assert_not_null(f, "--pidfile written once ready");
	cr_assert_eq(fscanf(f, "%d", &pid), 1);
	fclose(f);
	cr_assert_eq(pid, D.pid);
	snprintf(args, sizeof(args), "--socket %s --ns secret ping", D.sock);
	cr_assert_eq(kvcctl_as_nobody(args, out, sizeof(out)), 1, "%s", out);
	snprintf(out, sizeof(out),
		 "[kvcd]\nsocket_mode = 0666\nworkers = 3\nlog_level = debug\n"
		 "[namespace secret]\nallow_uids = 0, %u\n",
		 nobody());
	write_file(conf, out);
	cr_assert_eq(kill(D.pid, SIGHUP), 0);
	for (int i = 0; i < 100 && !log_has("configuration reloaded"); i++)
		t_sleep_ms(20);
	cr_assert(log_has("configuration reloaded"));
	cr_assert(log_has("workers cannot change while kvcd runs"), "names what it kept");
	cr_assert_eq(kvcctl_as_nobody(args, out, sizeof(out)), 0, "the new ACL admits nobody: %s",
		     out);
	write_file(conf, "[kvcd]\nworkers = many\n");
	cr_assert_eq(kill(D.pid, SIGHUP), 0);
	for (int i = 0; i < 100 && !log_has("keeping the running configuration"); i++)
		t_sleep_ms(20);
	cr_assert(log_has("keeping the running configuration"));
	cr_assert_eq(kvcctl_as_nobody(args, out, sizeof(out)), 0, "still the last good one: %s",
		     out);
	cr_assert_eq(t_daemon_stop(&D), 0, "SIGHUP never stopped it");
	cr_assert_neq(access(pidfile, F_OK), 0, "the pidfile goes with kvcd");
}

/* kvcd starts whatever the GPUs: it says what it found (here, on a machine without a CUDA
 * driver, that there is none) in STATS and kvcctl, and [gpu] devices = none turns the probe
 * off. */
Test(cli, gpu_devices_are_reported_driver_or_not)
{
	static char out[1 << 17];
	struct kvc_stats st;
	const char *s;

	t_daemon_start(&D, "32M");
	kvc_client *c = t_attach(&D, NULL, 4096);

	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	cr_assert(st.gpu.status >= KVC_GPU_NO_DRIVER && st.gpu.status <= KVC_GPU_READY, "status %d",
		  st.gpu.status);
	cr_assert(st.gpu.why[0], "it says why");
	cr_assert_eq(st.gpu.status == KVC_GPU_READY, st.gpu.ndev > 0);
	cr_assert_eq(t_kvcctl(&D, "stats --json", out, sizeof(out)), 0, "%s", out);
	cr_assert_not_null(s = strstr(out, "\"gpu\": {\"status\": \""), "%s", out);
	cr_assert_not_null(strstr(out, "\"gpus\": ["), "%s", out);
	if (access("/usr/lib/x86_64-linux-gnu/libcuda.so.1", F_OK) &&
	    access("/usr/lib64/libcuda.so.1", F_OK) && access("/usr/lib/libcuda.so.1", F_OK)) {
		cr_assert_eq(st.gpu.status, KVC_GPU_NO_DRIVER, "%s", st.gpu.why);
		cr_assert_not_null(strstr(out, "\"gpus\": []"), "%s", out);
	}
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D); /* its directory too: the next kvcd makes its own */
	t_daemon_start_conf(&D, "[gpu]\ndevices = none\n");
	c = t_attach(&D, NULL, 4096);
	cr_assert_eq(kvc_stats(c, &st, sizeof(st)), 0);
	kvc_detach(c);
	cr_assert_eq(st.gpu.status, KVC_GPU_OFF);
	cr_assert_eq(t_daemon_stop(&D), 0);
}

/* A namespace is named by its client, quotes and backslashes allowed: kvcctl's JSON stays
 * JSON with such a name in it. */
Test(cli, json_output_escapes_client_named_namespaces)
{
	char args[256], out[4096];
	const char *name = "we\"ird\\name";

	t_daemon_start(&D, "32M");
	kvc_client *c = t_attach(&D, name, 4096);

	for (int k = 0; k < 2; k++) {
		snprintf(args, sizeof(args), "%s --json > %s/out.json", k ? "clients" : "stats",
			 D.dir);
		cr_assert_eq(t_kvcctl(&D, args, out, sizeof(out)), 0, "%s", out);
		cr_assert_eq(
			t_sh(out, sizeof(out),
			     "/usr/bin/python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); "
			     "print(repr(d))' %s/out.json 2>&1",
			     D.dir),
			0, "not JSON: %s", out);
		cr_assert_not_null(strstr(out, "we\"ird\\\\name"), "the name comes back: %.300s",
				   out);
	}
	kvc_detach(c);
	cr_assert_eq(t_daemon_stop(&D), 0);
}
