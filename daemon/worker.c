/* worker.c - threads that drain client rings and execute requests.
 *
 * Each session belongs to exactly one worker, which is therefore the only consumer of its SQ
 * and the only producer of its CQ (SPSC on both rings). A worker polls its sessions, spins
 * for busy_poll_us after the last request, then sleeps in futex_waitv on every session's SQ
 * doorbell plus its own private wake word (io_uring's NEED_WAKEUP protocol, see kvcp.h).
 *
 * Every SQE is copied once into a local (kvcp_entry_read) and handed to ops.c, which
 * validates and executes it; the worker pushes the completion and records the service time
 * (stats.c). Impossible ring indices mark the session broken and the main thread
 * disconnects it.
 */
#include <errno.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvcd.h"

#ifndef FUTEX2_SIZE_U32
#define FUTEX2_SIZE_U32 FUTEX_32 /* older uapi headers name it FUTEX_32 */
#endif
#ifndef FUTEX2_PRIVATE
#define FUTEX2_PRIVATE FUTEX_PRIVATE_FLAG
#endif

#define BATCH 32

/* ---- the polling loop --------------------------------------------------------------------- */

static void mark_broken(struct kvcd *d, struct kvcd_session *s, const char *why)
{
	uint64_t one = 1;

	if (s->broken)
		return;
	kvcd_log_client(LOG_WARNING, s, "client %u (pid %d): %s; disconnecting", s->id, (int)s->pid,
			why);
	__atomic_store_n(&s->broken, 1, __ATOMIC_RELEASE);
	__atomic_fetch_add(&s->bad_requests, 1, __ATOMIC_RELAXED);
	if (write(d->reap_fd, &one, sizeof(one)) < 0)
		kvcd_log(LOG_ERR, "eventfd: %s", strerror(errno));
}

/* Room for one more completion? Reloads the client's consumer index when the cached one says
 * full, and checks it is possible. */
static bool cq_room(struct kvcd *d, struct kvcd_session *s)
{
	uint32_t cons;

	if (s->cq_prod - s->cq_cons_cache < s->cq_entries)
		return true;
	/* A3: pairs with R2 of the client's kvcp_ring_take() on the CQ */
	cons = kvcp_load_acquire(&s->hdr->cq.cons);
	if (s->cq_prod - cons > s->cq_entries) {
		mark_broken(d, s, "completion ring consumer index out of range");
		return false;
	}
	s->cq_cons_cache = cons;
	return s->cq_prod - cons < s->cq_entries;
}

/* Was the session's request handed to another thread (the remote tier, a GPU's mover, a
 * CALIBRATE's thread), which wakes the worker when it is done? */
static bool handed_off(const struct kvcd_session *s)
{
	return s->cont.rget || s->cont.gjob || s->cont.cjob;
}

/* Is it still in that thread's hands? */
static bool waiting(const struct kvcd_session *s)
{
	if (!s->cont.active)
		return false;
	if (s->cont.rget)
		return __atomic_load_n(&s->cont.rget->done, __ATOMIC_ACQUIRE) != 1;
	if (s->cont.cjob)
		return __atomic_load_n(&s->cont.cjob->done, __ATOMIC_ACQUIRE) != 1;
	return s->cont.gjob && !__atomic_load_n(&s->cont.gjob->done, __ATOMIC_ACQUIRE);
}

/* Tell the client whether the request in hand takes long (sq.hint, kvcp.h); written only when
 * it changes, so the line stays in the client's cache while it spins. */
static void say_long(struct kvcd_session *s, bool on)
{
	if (s->said_long == on)
		return;
	s->said_long = on;
	kvcp_store_relaxed(&s->hdr->sq.hint, on ? KVCP_HINT_LONG : 0);
}

static unsigned process(struct kvcd *d, struct kvcd_worker *w, struct kvcd_session *s)
{
	struct kvcp_sqe sqe;
	struct kvcp_cqe cqe;
	unsigned n = 0;
	uint64_t t0;
	bool done;
	int r;

	while (n < BATCH && !s->broken && cq_room(d, s)) {
		if (waiting(s))
			break;	      /* the thread that has it wakes us */
		if (s->cont.active) { /* a long request: one more slice, then the next ring */
			t0 = kvcd_now_ns();
			sqe = s->cont.sqe;
			done = kvcd_resume(d, s, &cqe);
		} else {
			/* the clock only once there is a request: an idle poll stays short */
			r = s->phase ? kvcp_ring_pop_phase(&s->hdr->sq, s->sq, s->sq_entries,
							   &s->sq_cons, &sqe, KVCP_SQE_PHASE_WORD,
							   KVCP_SQE_PHASE_BIT)
				     : kvcp_ring_pop(&s->hdr->sq, s->sq, s->sq_entries, &s->sq_cons,
						     &sqe);
			if (r < 0)
				mark_broken(d, s, "submission ring producer index out of range");
			if (r != 1)
				break;
			t0 = kvcd_now_ns();
			s->cont.ns = 0;
			done = kvcd_execute(d, s, &sqe, &cqe);
		}
		n++;
		if (!done) {
			s->cont.ns += kvcd_now_ns() - t0;
			if (handed_off(s))
				w->parked = true;
			say_long(s, true);
			break;
		}
		w->parked = false;
		say_long(s, false);
		/* the completion first: the client waits for it, not for our bookkeeping */
		if (s->phase)
			kvcp_ring_push_phase(&s->hdr->cq, s->cq, s->cq_entries, &s->cq_prod,
					     &s->cq_cons_cache, &cqe, KVCP_CQE_PHASE_WORD,
					     KVCP_CQE_PHASE_BIT);
		else
			kvcp_ring_push(&s->hdr->cq, s->cq, s->cq_entries, &s->cq_prod,
				       &s->cq_cons_cache, &cqe);
		s->cont.ns += kvcd_now_ns() - t0;
		kvcd_op_record(&w->ops, sqe.opcode, cqe.res, s->cont.ns);
	}
	if (n) {
		uint32_t hint;
		bool woke = false;

		/* Pairs with the client's fence between setting NEED_WAKEUP and re-checking. */
		kvcp_fence();
		if (kvcp_load_relaxed(&s->hdr->cq.flags) & KVCP_RING_NEED_WAKEUP) {
			__atomic_fetch_add(&s->hdr->cq.futex, 1, __ATOMIC_RELEASE);
			kvcd_futex_wake(&s->hdr->cq.futex, 1, true);
			woke = true;
		}
		hint = kvcp_load_relaxed(&s->hdr->cq.hint);
		if (hint == KVCP_HINT_SPIN || (hint != KVCP_HINT_SLEEP && !woke))
			w->spin = true;
	}
	return n;
}

static bool has_work(struct kvcd_session *s)
{
	if (s->cont.active && handed_off(s)) /* the thread that has it wakes us */
		return !s->broken && !waiting(s);
	return !s->broken &&
	       (s->cont.active ||
		(s->phase ? (uint32_t)kvcp_ring_ready_phase(s->sq, s->sq_entries, s->sq_cons,
							    KVCP_SQE_PHASE_WORD, KVCP_SQE_PHASE_BIT)
			  : kvcp_ring_pending(&s->hdr->sq, s->sq_entries, s->sq_cons))) &&
	       (s->cq_prod - s->cq_cons_cache < s->cq_entries ||
		s->cq_prod - kvcp_load_acquire(&s->hdr->cq.cons) < s->cq_entries);
}

#define POLL_MIN_US 50u
#define POLL_MAX_US 1000u

/* Without futex_waitv (Linux before 5.16, and sandboxes such as gVisor): a worker with no
 * session waits on its own word alone; one with sessions cannot wait on their doorbells, so it
 * looks at its rings again after a sleep that doubles while it stays idle, from POLL_MIN_US
 * to POLL_MAX_US (a sleeping client's request waits that long at most). Said once. */
static void poll_wait(struct kvcd_worker *w, struct futex_waitv *wv, unsigned k)
{
	static int said;

	if (!__atomic_exchange_n(&said, 1, __ATOMIC_RELAXED))
		kvcd_log(LOG_WARNING,
			 "futex_waitv is not available (a kernel before 5.16, or a sandbox): idle "
			 "workers look at their rings every %u to %u us",
			 POLL_MIN_US, POLL_MAX_US);
	if (k == 1) {
		kvcd_futex_wait(&w->wake, (uint32_t)wv[0].val, 1000000000ull);
		return;
	}
	struct timespec ts = { 0, (long)w->poll_us * 1000 };

	nanosleep(&ts, NULL);
	w->poll_us = w->poll_us * 2 > POLL_MAX_US ? POLL_MAX_US : w->poll_us * 2;
}

/* Sleep until a client rings, the session list changes or one second passes. */
static void sleep_on(struct kvcd_worker *w, struct kvcd_session **ss, unsigned n)
{
	struct futex_waitv wv[KVCD_WORKER_MAX_SESSIONS + 1];
	unsigned k = 1;
	bool work = false;

	memset(wv, 0, sizeof(wv));
	wv[0].uaddr = (uintptr_t)&w->wake;
	wv[0].val = __atomic_load_n(&w->wake, __ATOMIC_ACQUIRE);
	wv[0].flags = FUTEX2_SIZE_U32 | FUTEX2_PRIVATE;
	for (unsigned i = 0; i < n; i++) {
		if (ss[i]->broken)
			continue;
		wv[k].uaddr = (uintptr_t)&ss[i]->hdr->sq.futex;
		wv[k].val = kvcp_load_acquire(&ss[i]->hdr->sq.futex);
		wv[k].flags = FUTEX2_SIZE_U32;
		k++;
		kvcp_store_relaxed(&ss[i]->hdr->sq.flags, KVCP_RING_NEED_WAKEUP);
	}
	/* Pairs with the client's fence in ring_doorbell(): it sees our flag or we its prod. */
	kvcp_fence();
	for (unsigned i = 0; i < n && !work; i++)
		work = has_work(ss[i]);
	if (!work && __atomic_load_n(&w->gen, __ATOMIC_ACQUIRE) == w->seen_gen &&
	    kvcd_futex_waitv(wv, k, kvcd_now_ns() + 1000000000ull) < 0 && errno == ENOSYS)
		poll_wait(w, wv, k);
	for (unsigned i = 0; i < n; i++)
		kvcp_store_relaxed(&ss[i]->hdr->sq.flags, 0);
}

#define SPIN_LOOKS 8u

static void *worker_main(void *arg)
{
	struct kvcd_worker *w = arg;
	struct kvcd_session *local[KVCD_WORKER_MAX_SESSIONS];
	unsigned n = 0;
	uint64_t last = kvcd_now_ns(), spin_ns = w->d->cfg.busy_poll_us * 1000ull;
	unsigned looks = 0, per_clock = 1;
	bool nospin = true; /* spin only after answering a client that spins */

	for (;;) {
		if (__atomic_load_n(&w->gen, __ATOMIC_ACQUIRE) != w->seen_gen) {
			pthread_mutex_lock(&w->lock);
			if (w->stop) {
				w->seen_gen = w->gen;
				pthread_cond_broadcast(&w->acked);
				pthread_mutex_unlock(&w->lock);
				return NULL;
			}
			n = w->nsessions;
			memcpy(local, w->sessions, n * sizeof(local[0]));
			per_clock = SPIN_LOOKS;
			for (unsigned i = 0; i < n; i++)
				per_clock = local[i]->phase ? per_clock : 1;
			w->seen_gen = w->gen;
			pthread_cond_broadcast(&w->acked);
			pthread_mutex_unlock(&w->lock);
		}
		unsigned did = 0;

		w->spin = false;
		for (unsigned i = 0; i < n; i++)
			did += process(w->d, w, local[i]);
		if (did) {
			w->poll_us = POLL_MIN_US;
			last = kvcd_now_ns();
			/* spin for the next request only if a client answered is spinning too (its
			 * cq.hint, see kvcp.h) */
			nospin = !w->spin;
			continue;
		}
		/* A request handed to another thread (the remote tier, a GPU's mover, a CALIBRATE)
		 * is woken by it: spinning for it would only take a core from that thread. With
		 * phase-tagged rings only, the clock is read one look in SPIN_LOOKS: a look at an
		 * entry is what finds the next request, and the clock would slow every one. A
		 * classic ring's prod is better looked at less often: each look takes its line
		 * from the client that is about to write it. */
		if (!w->parked && !nospin &&
		    (++looks % per_clock || kvcd_now_ns() - last < spin_ns)) {
			__builtin_ia32_pause();
			continue;
		}
		sleep_on(w, local, n);
		last = kvcd_now_ns();
		/* woken by a request, it answers it before it may spin; by the one-second timeout
		 * or a new session list, nobody is waiting for it to spin */
		nospin = true;
	}
}

static void kick(struct kvcd_worker *w)
{
	__atomic_fetch_add(&w->wake, 1, __ATOMIC_RELEASE);
	kvcd_futex_wake(&w->wake, 1, false);
}

/* Bump the generation and wait until the worker has taken the new list. Lock held. */
static void publish_and_wait(struct kvcd_worker *w)
{
	uint32_t gen = ++w->gen;

	kick(w);
	while (w->seen_gen != gen)
		pthread_cond_wait(&w->acked, &w->lock);
}

int kvcd_worker_start(struct kvcd_worker *w, struct kvcd *d, unsigned id)
{
	int err;

	memset(w, 0, sizeof(*w));
	w->d = d;
	w->id = id;
	w->poll_us = POLL_MIN_US;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->acked, NULL);
	err = -pthread_create(&w->thread, NULL, worker_main, w);
	if (!err) {
		char name[16];

		snprintf(name, sizeof(name), "kvcd-w%u", id);
		pthread_setname_np(w->thread, name);
	}
	return err;
}

void kvcd_worker_stop(struct kvcd_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stop = true;
	publish_and_wait(w);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
}

int kvcd_worker_add(struct kvcd_worker *w, struct kvcd_session *s)
{
	int err = 0;

	pthread_mutex_lock(&w->lock);
	if (w->nsessions == KVCD_WORKER_MAX_SESSIONS) {
		err = -EUSERS;
	} else {
		w->sessions[w->nsessions++] = s;
		s->worker = w->id;
		++w->gen;
		kick(w);
	}
	pthread_mutex_unlock(&w->lock);
	return err;
}

void kvcd_worker_remove(struct kvcd_worker *w, struct kvcd_session *s)
{
	pthread_mutex_lock(&w->lock);
	for (unsigned i = 0; i < w->nsessions; i++)
		if (w->sessions[i] == s) {
			w->sessions[i] = w->sessions[--w->nsessions];
			break;
		}
	publish_and_wait(w);
	pthread_mutex_unlock(&w->lock);
}
