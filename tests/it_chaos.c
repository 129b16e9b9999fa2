/* it_chaos.c - the chaos suite's scenarios (tools/kvc-chaos.c), two seconds each: clients
 * killed mid-operation, hostile clients scribbling over their rings, connection floods, a
 * stopped kvcd and warm restarts, each beside verifying clients. make chaos runs them for
 * ten minutes against the ASan+UBSan kvcd. */
#include "t_util.h"

static void scenario(const char *name)
{
	char bin[256], cmd[768], out[4096];
	FILE *f;
	size_t n;
	int st;

	snprintf(bin, sizeof(bin), "%s", t_kvcd_bin());
	snprintf(cmd, sizeof(cmd), "%s/kvc-chaos --kvcd %s --seconds 2 --scenario %s 2>&1",
		 dirname(bin), t_kvcd_bin(), name);
	f = popen(cmd, "r");
	cr_assert_not_null(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = '\0';
	st = pclose(f);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s", out);
	cr_assert_not_null(strstr(out, "0 corrupt bytes"), "%s", out);
}

TestSuite(chaos, .timeout = 120);

Test(chaos, clients_killed_mid_operation)
{
	scenario("kill");
}

Test(chaos, hostile_clients_scribbling)
{
	scenario("hostile");
}

Test(chaos, connection_floods)
{
	scenario("flood");
}

Test(chaos, daemon_stopped)
{
	scenario("stop");
}

Test(chaos, warm_restarts_under_load)
{
	scenario("restart");
}
