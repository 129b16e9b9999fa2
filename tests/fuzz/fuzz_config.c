/* fuzz_config.c - the INI configuration: any file is loaded or refused (-EINVAL and a line
 * on stderr), and what loads is checked against itself without crashing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvcd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	static struct kvcd_config c;
	static int fd = -1;
	char path[64];

	if (fd < 0) {
		fd = memfd_create("fuzz-config", MFD_CLOEXEC);
		if (fd < 0)
			abort();
		freopen("/dev/null", "w", stderr); /* the reasons, one per bad line */
	}
	if (ftruncate(fd, 0) || pwrite(fd, data, n, 0) != (ssize_t)n)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	kvcd_config_defaults(&c);
	if (kvcd_config_load(&c, path) == 0)
		kvcd_config_check(&c);
	return 0;
}
