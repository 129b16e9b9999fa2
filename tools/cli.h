/* cli.h - what every tool's command line shares: strict numbers and sizes (an argument that
 * is not one is an error naming it), and attach errors in words an operator can act on. */
#ifndef KVC_CLI_H
#define KVC_CLI_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <kvc.h>

/* "4096", "64K", "64M", "1G", "2T", "2MiB", "1GB" (powers of two) -> bytes. Returns 0, or
 * -EINVAL after saying on stderr which of @prog's arguments (@what) is wrong. */
static inline int cli_size(const char *prog, const char *what, const char *s, uint64_t *out)
{
	char *end;
	unsigned shift = 0;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (!errno && end != s && *s != '-' && *s != '+') {
		switch (*end) {
		case 'k':
		case 'K': shift = 10; break;
		case 'm':
		case 'M': shift = 20; break;
		case 'g':
		case 'G': shift = 30; break;
		case 't':
		case 'T': shift = 40; break;
		}
		end += shift != 0;
		if (shift && (!strcmp(end, "iB") || !strcmp(end, "B")))
			end += strlen(end);
		if (!*end && (!shift || v <= (UINT64_MAX >> shift))) {
			*out = (uint64_t)v << shift;
			return 0;
		}
	}
	fprintf(stderr, "%s: %s '%s': expected a size such as 4096, 64M or 1G\n", prog, what, s);
	return -EINVAL;
}

/* A whole number in [@min, @max], strictly. Returns 0 or -EINVAL (said on stderr). */
static inline int cli_uint(const char *prog, const char *what, const char *s,
			   unsigned long long min, unsigned long long max, unsigned long long *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || *s == '+' || v < min || v > max) {
		fprintf(stderr, "%s: %s '%s': expected a whole number from %llu to %llu\n", prog,
			what, s, min, max);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

/* `TOOL --version` anywhere on the command line: print the release and exit. */
static inline void cli_version(int argc, char **argv, const char *tool)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--version")) {
			printf("%s %s\n", tool, KVC_VERSION_STRING);
			exit(0);
		}
}

/* Say why attaching to @path (NULL: the default) for namespace @ns failed with @err. */
static inline void cli_attach_error(const char *prog, const char *path, const char *ns, int err)
{
	struct stat st;

	if (!path)
		path = kvc_default_socket();
	if (err == -ENOENT || err == -ECONNREFUSED) {
		if (stat(path, &st))
			fprintf(stderr,
				"%s: no kvcd at %s: no such socket (is kvcd running? --socket PATH "
				"or $KVCD_SOCKET name another)\n",
				prog, path);
		else
			fprintf(stderr,
				"%s: no kvcd listening at %s (the socket of a kvcd that is "
				"not running)\n",
				prog, path);
	} else if (err == -EACCES && access(path, R_OK | W_OK)) {
		fprintf(stderr,
			"%s: permission denied on %s: uid %u may not open it (kvcd's socket_group "
			"and socket_mode)\n",
			prog, path, (unsigned)getuid());
	} else if (err == -EACCES) {
		fprintf(stderr,
			"%s: namespace '%s' does not allow uid %u (allow_uids and allow_gids in "
			"kvcd's configuration)\n",
			prog, ns ? ns : "default", (unsigned)getuid());
	} else {
		fprintf(stderr, "%s: cannot attach to %s: %s\n", prog, path, kvc_strerror(err));
	}
}

#endif /* KVC_CLI_H */
