/* unit_config.c - sizes, the INI file, namespace allow lists. */
#include "t_util.h"
#include "kvcd.h"

Test(config, sizes)
{
	uint64_t v;

	cr_assert_eq(kvcd_parse_size("256M", &v), 0);
	cr_assert_eq(v, 256ull << 20);
	cr_assert_eq(kvcd_parse_size("2GiB", &v), 0);
	cr_assert_eq(v, 2ull << 30);
	cr_assert_eq(kvcd_parse_size("4096", &v), 0);
	cr_assert_eq(v, 4096);
	cr_assert_eq(kvcd_parse_size("12X", &v), -EINVAL);
	cr_assert_eq(kvcd_parse_size("-1M", &v), -EINVAL);
	cr_assert_eq(kvcd_parse_size("", &v), -EINVAL);
	cr_assert_eq(kvcd_parse_size("99999999999999T", &v), -EINVAL);
}

static const char *write_tmp(const char *text)
{
	static char path[64];
	int fd;

	strcpy(path, "/tmp/kvcd-conf-XXXXXX");
	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return path;
}

Test(config, file_with_namespaces)
{
	struct kvcd_config c;
	const char *p = write_tmp("[kvcd]\npool_size = 1G\nworkers = 3\nhugepages = never\n"
				  "checksum = no\nhigh_watermark = 80\nlow_watermark = 60\n"
				  "[namespace llama-7b]\nallow_uids = 0, 1000\nallow_gids = 44\n"
				  "policy = kivi:kbits=2,vbits=4\n"
				  "[namespace open]\npolicy = int4\n[kvcd]\npolicy = fp8\n");

	kvcd_config_defaults(&c);
	cr_assert_eq(kvcd_config_load(&c, p), 0);
	unlink(p);
	cr_assert_eq(c.pool_size, 1ull << 30);
	cr_assert_eq(c.workers, 3);
	cr_assert_eq(c.hugepages, KVCD_HUGE_NEVER);
	cr_assert_not(c.checksum);
	cr_assert(kvcd_config_allows(&c, "llama-7b", 1000, 5));
	cr_assert(kvcd_config_allows(&c, "llama-7b", 5, 44), "by group");
	cr_assert_not(kvcd_config_allows(&c, "llama-7b", 65534, 65534));
	cr_assert(kvcd_config_allows(&c, "other", 65534, 65534), "unlisted namespaces are open");
	cr_assert(kvcd_config_allows(&c, "open", 65534, 65534), "so are ones listed for a policy");
	cr_assert_eq(kvcd_config_policy(&c, "llama-7b")->kind, KVCD_CODEC_KIVI);
	cr_assert_eq(kvcd_config_policy(&c, "llama-7b")->kbits, 2);
	cr_assert_eq(kvcd_config_policy(&c, "open")->kbits, 4);
	cr_assert_eq(kvcd_config_policy(&c, "other")->kind, KVCD_CODEC_FP8, "the [kvcd] default");
	c.strict_ns = true;
	cr_assert_not(kvcd_config_allows(&c, "other", 0, 0), "unless strict");
}

Test(config, errors_are_reported_not_ignored)
{
	struct kvcd_config c;
	const char *p;

	kvcd_config_defaults(&c);
	p = write_tmp("[kvcd]\npool_sise = 1G\n");
	cr_assert_eq(kvcd_config_load(&c, p), -EINVAL, "unknown key");
	unlink(p);
	p = write_tmp("[kvcd]\nworkers = many\n");
	cr_assert_eq(kvcd_config_load(&c, p), -EINVAL);
	unlink(p);
	p = write_tmp("[kvcd]\nhigh_watermark = 50\nlow_watermark = 70\n");
	cr_assert_eq(kvcd_config_load(&c, p), -EINVAL, "low above high");
	unlink(p);
	p = write_tmp("[namespace x]\nallow_uids = no-such-user-kvcd\n");
	cr_assert_eq(kvcd_config_load(&c, p), -EINVAL);
	unlink(p);
	cr_assert_eq(kvcd_config_load(&c, "/nonexistent/kvcd.conf"), -ENOENT);
}
