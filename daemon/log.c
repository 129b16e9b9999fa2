/* log.c - where kvcd's messages go: the journal when systemd connected stderr to it (with a
 * priority and structured fields), stderr in the foreground, syslog once detached. A message
 * below log_level is dropped before it is formatted. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include "kvcd.h"

static enum {
	TO_STDERR,
	TO_JOURNAL,
	TO_SYSLOG
} target = TO_STDERR;
static int level = LOG_INFO;

/* systemd sets JOURNAL_STREAM to the device and inode of the stream it gave us: log to the
 * journal only while stderr is still that stream (sd-journal's own advice). */
static bool stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	return e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(2, &st) == 0 &&
	       (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void kvcd_log_init(bool detached)
{
	if (stderr_is_journal()) {
		target = TO_JOURNAL;
	} else if (detached) {
		openlog("kvcd", LOG_PID | LOG_NDELAY, LOG_DAEMON);
		target = TO_SYSLOG;
	} else {
		target = TO_STDERR;
	}
}

void kvcd_log_level(int prio)
{
	__atomic_store_n(&level, prio, __ATOMIC_RELAXED);
}

int kvcd_log_parse_level(const char *s)
{
	static const char *const names[] = { "emerg",	"alert",  "crit", "err",
					     "warning", "notice", "info", "debug" };

	for (int i = 0; i < 8; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

static void emit(int prio, const struct kvcd_session *s, const char *fmt, va_list ap)
{
	char msg[1024];

	if (prio > __atomic_load_n(&level, __ATOMIC_RELAXED))
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	switch (target) {
	case TO_JOURNAL:
		if (s)
			sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", prio, "KVCD_CLIENT=%u",
					s->id, "KVCD_CLIENT_PID=%d", (int)s->pid,
					"KVCD_CLIENT_UID=%u", (unsigned)s->uid, "KVCD_NAMESPACE=%s",
					s->ns, NULL);
		else
			sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", prio, NULL);
		break;
	case TO_SYSLOG: syslog(prio, "%s", msg); break;
	default: fprintf(stderr, "kvcd: %s\n", msg);
	}
}

void kvcd_log(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	emit(prio, NULL, fmt, ap);
	va_end(ap);
}

void kvcd_log_client(int prio, const struct kvcd_session *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	emit(prio, s, fmt, ap);
	va_end(ap);
}
