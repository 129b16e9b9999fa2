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
	cr_assert(kvcd_config_allows(&c, "llama-7b", 1000, 5, NULL, 0));
	cr_assert(kvcd_config_allows(&c, "llama-7b", 5, 44, NULL, 0), "by group");
	cr_assert(kvcd_config_allows(&c, "llama-7b", 5, 5, (gid_t[]){ 7, 44 }, 2),
		  "by a supplementary group");
	cr_assert_not(kvcd_config_allows(&c, "llama-7b", 65534, 65534, (gid_t[]){ 7 }, 1));
	cr_assert(kvcd_config_allows(&c, "other", 65534, 65534, NULL, 0),
		  "unlisted namespaces are open");
	cr_assert(kvcd_config_allows(&c, "open", 65534, 65534, NULL, 0),
		  "so are ones listed for a policy");
	cr_assert_eq(kvcd_config_policy(&c, "llama-7b")->kind, KVCD_CODEC_KIVI);
	cr_assert_eq(kvcd_config_policy(&c, "llama-7b")->kbits, 2);
	cr_assert_eq(kvcd_config_policy(&c, "open")->kbits, 4);
	cr_assert_eq(kvcd_config_policy(&c, "other")->kind, KVCD_CODEC_FP8, "the [kvcd] default");
	c.strict_ns = true;
	cr_assert_not(kvcd_config_allows(&c, "other", 0, 0, NULL, 0), "unless strict");
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
	p = write_tmp("[kvcd]\nmax_clients = 0\n");
	cr_assert_eq(kvcd_config_load(&c, p), -EINVAL, "max_clients = 0");
	unlink(p);
	p = write_tmp("[namespace x]\nallow_uids = no-such-user-kvcd\n");
	cr_assert_eq(kvcd_config_load(&c, p), -EINVAL);
	unlink(p);
	cr_assert_eq(kvcd_config_load(&c, "/nonexistent/kvcd.conf"), -ENOENT);
}

/* Values that are each fine but contradict another are refused before kvcd serves anyone. */
Test(config, values_checked_against_each_other)
{
	struct kvcd_config c;
	const char *p;

	kvcd_config_defaults(&c);
	cr_assert_eq(kvcd_config_check(&c), 0, "the defaults agree");
	p = write_tmp("[kvcd]\nstaging_size = 64M\nstaging_max = 16M\n");
	cr_assert_eq(kvcd_config_load(&c, p), 0, "each value alone is fine");
	unlink(p);
	cr_assert_eq(kvcd_config_check(&c), -EINVAL, "staging_size above staging_max");
	kvcd_config_defaults(&c);
	p = write_tmp("[kvcd]\nhigh_watermark = 50\nlow_watermark = 70\n");
	cr_assert_eq(kvcd_config_load(&c, p), 0);
	unlink(p);
	cr_assert_eq(kvcd_config_check(&c), -EINVAL, "low above high");
	kvcd_config_defaults(&c);
	p = write_tmp("[kvcd]\nmax_pending = 4\nmax_pending_per_uid = 8\n");
	cr_assert_eq(kvcd_config_load(&c, p), 0);
	unlink(p);
	cr_assert_eq(kvcd_config_check(&c), -EINVAL, "per-uid pending above the total");
	kvcd_config_defaults(&c);
	p = write_tmp("[kvcd]\nadmin_uids = 1000, 1001\nmax_pins = 10\n"
		      "[namespace q]\nquota = 2G\n");
	cr_assert_eq(kvcd_config_load(&c, p), 0);
	unlink(p);
	cr_assert_eq(kvcd_config_check(&c), 0);
	cr_assert(kvcd_config_admin(&c, 1001, 5000));
	cr_assert(kvcd_config_admin(&c, 5000, 5000), "kvcd's own uid");
	cr_assert_not(kvcd_config_admin(&c, 1002, 5000));
	cr_assert_eq(kvcd_config_ns(&c, "q")->quota, 2ull << 30);
	cr_assert_eq(c.max_pins, 10);
}

Test(config, gpu_devices)
{
	struct kvcd_config c;

	kvcd_config_defaults(&c);
	cr_assert(c.gpu_all, "every device there is, by default");
	cr_assert_eq(kvcd_parse_gpus(&c, "0, 2"), 0);
	cr_assert(!c.gpu_all);
	cr_assert_eq(c.gpu_ndev, 2);
	cr_assert_eq(c.gpu_dev[1], 2);
	cr_assert_eq(kvcd_parse_gpus(&c, "none"), 0);
	cr_assert(!c.gpu_all && !c.gpu_ndev);
	cr_assert_eq(kvcd_parse_gpus(&c, "all"), 0);
	cr_assert(c.gpu_all);
	cr_assert_eq(kvcd_parse_gpus(&c, "1,1"), -EINVAL, "named twice");
	cr_assert_eq(kvcd_parse_gpus(&c, "16"), -EINVAL, "ordinals 0 to 15");
	cr_assert_eq(kvcd_parse_gpus(&c, "gpu0"), -EINVAL);
	cr_assert_eq(kvcd_parse_gpus(&c, ""), -EINVAL);

	kvcd_config_defaults(&c);
	cr_assert_eq(c.gpu_pool_size, 0, "no GPU memory taken unless asked");
	const char *q = write_tmp("[gpu]\npool_size = 8G\n");
	cr_assert_eq(kvcd_config_load(&c, q), 0);
	unlink(q);
	cr_assert_eq(c.gpu_pool_size, 8ull << 30);
	cr_assert_eq(kvcd_config_check(&c), 0);
	c.gpu_pool_size = 1u << 20;
	cr_assert_eq(kvcd_config_check(&c), -EINVAL, "below a device's granularity");
	q = write_tmp("[gpu]\npool_size = much\n");
	cr_assert_neq(kvcd_config_load(&c, q), 0);
	unlink(q);
	cr_assert(c.gpu_all, "a bad value changes nothing");
	const char *p = write_tmp("[gpu]\ndevices = 3\n");

	cr_assert_eq(kvcd_config_load(&c, p), 0);
	cr_assert(!c.gpu_all && c.gpu_ndev == 1 && c.gpu_dev[0] == 3);
	unlink(p);
	p = write_tmp("[gpu]\ndevices = some\n");
	cr_assert_neq(kvcd_config_load(&c, p), 0);
	unlink(p);
}

Test(config, memlock)
{
	struct kvcd_config c;
	const char *p;

	kvcd_config_defaults(&c);
	cr_assert_not(c.memlock_try, "pools that cannot be locked stop kvcd by default");
	p = write_tmp("[kvcd]\nmemlock = try\n");
	cr_assert_eq(kvcd_config_load(&c, p), 0);
	unlink(p);
	cr_assert(c.memlock_try);
	p = write_tmp("[kvcd]\nmemlock = maybe\n");
	cr_assert_neq(kvcd_config_load(&c, p), 0);
	unlink(p);
}
