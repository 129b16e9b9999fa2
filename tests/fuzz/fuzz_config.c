/* fuzz_config.c - the INI configuration: any file is loaded or refused (-EINVAL and a line
 * on stderr), and what loads is checked against itself without crashing. */
#include <fcntl.h>
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
	static int fd = -1, null = -1, err2 = -1;
	char path[64];

	if (fd < 0) {
		fd = memfd_create("fuzz-config", MFD_CLOEXEC);
		null = open("/dev/null", O_WRONLY | O_CLOEXEC);
		err2 = dup(2);
		if (fd < 0 || null < 0 || err2 < 0)
			abort();
	}
	if (ftruncate(fd, 0) || pwrite(fd, data, n, 0) != (ssize_t)n)
		abort();
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	kvcd_config_defaults(&c);
	fflush(stderr);
	dup2(null, 2); /* the reasons, one per bad line: not the fuzzer's own output */
	if (kvcd_config_load(&c, path) == 0)
		kvcd_config_check(&c);
	fflush(stderr);
	dup2(err2, 2);
	return 0;
}
