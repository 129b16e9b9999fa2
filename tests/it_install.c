/* it_install.c - what a user installs works as installed: make install PREFIX=... puts the
 * binaries, library, headers, a .pc naming that prefix, the unit, the man pages (clean under
 * man --warnings), the docs and the Python package in place; the README's example program
 * builds against it with pkg-config and runs; the shipped example configuration starts kvcd;
 * make uninstall takes it all away again. */
#include "t_util.h"

static struct t_daemon D;
static char prefix[128];

static void cleanup(void)
{
	char cmd[256];

	t_daemon_cleanup(&D);
	if (prefix[0]) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", prefix);
		if (system(cmd))
			fprintf(stderr, "cleanup of %s failed\n", prefix);
	}
}

TestSuite(install, .fini = cleanup, .timeout = 120);

Test(install, installed_tree_works_and_uninstalls)
{
	char bin[256], build[256], out[8192], root[256];
	const char *args[] = { "--config", "docs/kvcd.conf.example", "--pool-size", "16M", NULL };

	snprintf(bin, sizeof(bin), "%s", t_kvcd_bin());
	snprintf(build, sizeof(build), "%s", dirname(bin));
	cr_assert_not_null(getcwd(root, sizeof(root)));
	strcpy(prefix, "/tmp/kvcd-install-XXXXXX");
	cr_assert_not_null(mkdtemp(prefix));
	cr_assert_eq(t_sh(out, sizeof(out),
			  "make -s install INSTALL_DEPS= BUILD=%s PREFIX=%s/usr 2>&1", build,
			  prefix),
		     0, "%s", out);
	/* a library built by make asan needs its runtime first, in the example and in Python */
	bool asan = t_sh(out, sizeof(out), "ldd %s/usr/lib/libkvcclient.so.0 | grep -q libasan",
			 prefix) == 0;
	char preload[8448] = "";

	if (asan) {
		cr_assert_eq(t_sh(out, sizeof(out), "gcc -print-file-name=libasan.so"), 0);
		out[strcspn(out, "\n")] = '\0';
		snprintf(preload, sizeof(preload), "LD_PRELOAD=%s ASAN_OPTIONS=detect_leaks=0",
			 out);
	}
	/* one version everywhere: the .pc says what kvc.h says */
	cr_assert_eq(t_sh(out, sizeof(out),
			  "PKG_CONFIG_PATH=%s/usr/lib/pkgconfig pkg-config --modversion kvcclient",
			  prefix),
		     0);
	cr_assert_str_eq(out, KVC_VERSION_STRING "\n");
	/* the README's example, built as a user would */
	cr_assert_eq(
		t_sh(out, sizeof(out),
		     "PKG_CONFIG_PATH=%s/usr/lib/pkgconfig cc %s -o %s/prefix_cache "
		     "%s/usr/share/doc/kvcd/prefix_cache.c $(PKG_CONFIG_PATH=%s/usr/lib/pkgconfig "
		     "pkg-config --cflags --libs kvcclient) -Wl,-rpath,%s/usr/lib 2>&1",
		     prefix, asan ? "-fsanitize=address,undefined" : "", prefix, prefix, prefix,
		     prefix),
		0, "%s", out);
	memset(&D, 0, sizeof(D));
	t_daemon_start(&D, "64M");
	cr_assert_eq(t_sh(out, sizeof(out), "%s/prefix_cache %s", prefix, D.sock), 0, "%s", out);
	cr_assert_not_null(strstr(out, "0 cached, 6 computed"), "%s", out);
	cr_assert_eq(t_sh(out, sizeof(out), "%s/prefix_cache %s", prefix, D.sock), 0, "%s", out);
	cr_assert_not_null(strstr(out, "6 cached, 0 computed"), "a second run hits: %s", out);
	cr_assert_eq(t_sh(out, sizeof(out), "ldd %s/prefix_cache | grep kvcclient", prefix), 0);
	cr_assert_not_null(strstr(out, prefix), "linked to the installed library: %s", out);
	/* the Python package finds the installed library */
	cr_assert_eq(t_sh(out, sizeof(out),
			  "%s PYTHONPATH=%s/usr/lib/python3/dist-packages /usr/bin/python3 -c "
			  "'import kvcd; print(kvcd.__version__, kvcd._ffi.lib._name)' 2>&1",
			  preload, prefix),
		     0, "%s", out);
	cr_assert_not_null(strstr(out, KVC_VERSION_STRING " "), "%s", out);
	cr_assert_not_null(strstr(out, prefix), "%s", out);
	/* man pages without warnings; the unit names the prefix */
	cr_assert_eq(
		t_sh(out, sizeof(out),
		     "for m in kvcd.8 kvcctl.1 kvcd.conf.5 kvc.3; do f=$(ls %s/usr/share/man/*/$m) "
		     "&& man --warnings -l $f 2>&1 >/dev/null; done",
		     prefix),
		0);
	cr_assert_eq(out[0], '\0', "man --warnings: %s", out);
	cr_assert_eq(t_sh(out, sizeof(out),
			  "grep ExecStart= %s/usr/lib/systemd/system/kvcd.service", prefix),
		     0);
	cr_assert_not_null(strstr(out, prefix), "%s", out);
	cr_assert_eq(t_daemon_stop(&D), 0);
	t_daemon_cleanup(&D);
	/* the shipped example configuration starts kvcd as it is */
	memset(&D, 0, sizeof(D));
	cr_assert_eq(t_daemon_start_args(&D, args), 0, "kvcd --config docs/kvcd.conf.example");
	cr_assert_eq(t_daemon_stop(&D), 0);
	cr_assert_eq(t_sh(out, sizeof(out),
			  "make -s uninstall INSTALL_DEPS= BUILD=%s PREFIX=%s/usr 2>&1", build,
			  prefix),
		     0, "%s", out);
	cr_assert_eq(t_sh(out, sizeof(out), "find %s/usr -type f | wc -l", prefix), 0);
	cr_assert_eq(atoi(out), 0, "uninstall left files behind");
}
