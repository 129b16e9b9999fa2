/* it_abi.c - the library's ABI: a program built against the previous release's header and
 * symbol versions (tests/abi/) runs against this library and a real kvcd. */
#include "t_util.h"

static struct t_daemon D;

static void up(void)
{
	t_daemon_start(&D, "16M");
}

static void down(void)
{
	cr_assert_eq(t_daemon_down(&D), 0, "kvcd exits 0 on SIGTERM");
}

TestSuite(abi, .init = up, .fini = down, .timeout = 30);

Test(abi, a_program_built_against_release_0_2_runs_against_this_library)
{
	char out[1024];
	int st = t_tool(&D, "abi-0.2-client", "", out, sizeof(out));

	cr_assert_eq(st, 0, "%s", out);
	cr_assert(strstr(out, "abi 0.2 ok"), "%s", out);
}
