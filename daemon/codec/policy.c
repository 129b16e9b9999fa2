/* policy.c - compression policies as strings, "codec[:key=value,...]", declared once.
 *
 * Every key is one row of `keys` below: its name, type, range, the field it sets, the codecs
 * it applies to, its default and what it does. One generic loop parses a string with it,
 * another prints the canonical string, and kvcd_policy_doc prints the table as
 * docs/policies.md (Redis's config.c does the same for its configuration). Rules about
 * keys together are the rows of `rules`, also printed into the docs.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

#define WHY(...) (snprintf(why, whylen, __VA_ARGS__), -EINVAL)

enum key_type {
	K_UINT, /* a whole number in [lo, hi] */
	K_FRAC, /* a fraction in [lo, hi], or a percent with a trailing %; stored as
			 * round(f * scale) */
	K_ENUM, /* one of names[]; stored as its index */
	K_FLAG, /* names[0] clears, names[1] sets the bit mask in the field */
};

#define C_NONE	(1u << KVCD_CODEC_NONE)
#define C_INT	(1u << KVCD_CODEC_INT)
#define C_FP8	(1u << KVCD_CODEC_FP8)
#define C_KIVI	(1u << KVCD_CODEC_KIVI)
#define C_QUANT (C_INT | C_FP8 | C_KIVI)
#define C_ALL	(C_NONE | C_QUANT)

#define F_ZERO_OFF 1u  /* 0 (off) is allowed besides [lo, hi] */
#define F_ODD	   2u  /* odd values only */
#define F_WHOLE	   4u  /* K_FRAC: only whole multiples of 1 / scale */
#define F_PCT	   8u  /* K_FRAC: printed as a percent */
#define F_BIAS	   16u /* stored as value + 1, so that 0 means off */
#define F_ALWAYS   32u /* printed whenever the field at `with` is non-zero, even as 0 */

struct key {
	const char *name, *alias;    /* alias: an older spelling, still accepted */
	uint8_t type, codecs, flags; /* enum key_type, C_*, F_* */
	uint16_t off, off2;	     /* fields set (off2: a second one, 0: none) */
	uint8_t size;		     /* bytes of the field(s) */
	uint32_t mask;		     /* K_FLAG: the bit */
	double lo, hi, scale;
	const char *const *names; /* K_ENUM, K_FLAG; NULL-terminated */
	uint16_t with;		  /* F_ALWAYS: printed when this field is non-zero */
	const char *dflt, *help;
};

#define FIELD(f) \
	(uint16_t) offsetof(struct kvcd_policy, f), 0, (uint8_t)sizeof(((struct kvcd_policy *)0)->f)
#define FIELD2(f, g)                                                                           \
	(uint16_t) offsetof(struct kvcd_policy, f), (uint16_t)offsetof(struct kvcd_policy, g), \
		(uint8_t)sizeof(((struct kvcd_policy *)0)->f)
#define WITH(f) (uint16_t) offsetof(struct kvcd_policy, f)

static const char *const codec_names[] = { "none", "int", "fp8", "kivi", NULL };
static const char *const off_on_rotate[] = { "none", "hadamard", NULL };
static const char *const virtual_names[] = { "none", "mean", NULL };
static const char *const resid_names[] = { "exact", "quant", NULL };
static const char *const params_names[] = { "f16", "u8", NULL };
static const char *const select_names[] = { "none", "recent", "keynorm", "h2o", "snapkv", NULL };
static const char *const budget_names[] = { "uniform", "pyramid", "adakv", "heads", NULL };
static const char *const merge_names[] = { "none", "key", "value", NULL };
static const char *const summary_names[] = { "none", "quest", "reps", "reps8", NULL };
static const char *const factors_names[] = { "dtype", "int8", NULL };
static const char *const svd_names[] = { "head", "layer", NULL };
static const char *const tensor_names[] = { "none", "tucker", NULL };
static const char *const off_on_names[] = { "off", "on", NULL };

/* In the order the canonical string lists them. */
static const struct key keys[] = {
	{ "bits", NULL, K_UINT, C_NONE | C_INT | C_KIVI, 0, FIELD2(kbits, vbits), 0, 2, 8, 1, NULL,
	  0, "int: 8 (intN: N)", "bits of K and V codes" },
	{ "kbits", NULL, K_UINT, C_NONE | C_INT | C_KIVI, 0, FIELD(kbits), 0, 2, 8, 1, NULL, 0,
	  "kivi: 4",
	  "bits of K codes; none with learned=on: K's coefficients' mean bits, spread by the "
	  "basis over (layer, head, direction) where they cut the most error" },
	{ "vbits", NULL, K_UINT, C_NONE | C_INT | C_KIVI, 0, FIELD(vbits), 0, 2, 8, 1, NULL, 0,
	  "kivi: 4", "bits of V codes; none with learned=on: as kbits, for V" },
	{ "group", NULL, K_UINT, C_QUANT, F_ALWAYS, FIELD(group), 0, 0, 65535, 1, NULL, WITH(kind),
	  "int: 64, kivi: 32, fp8: 0",
	  "channels per group of a token (int, fp8, kivi V; 0: head_dim; longer than head_dim: "
	  "the group spans the token's heads), tokens per group of a channel (kivi K)" },
	{ "minicache", NULL, K_UINT, C_NONE, F_BIAS, FIELD(mc), 0, 0, 254, 1, NULL, 0, "off",
	  "MiniCache: layers L and L+1, L+2 and L+3, ... share one direction per token" },
	{ "slerp", NULL, K_FRAC, C_NONE, F_ALWAYS, FIELD(mc_t), 0, 0, 1, 100, NULL, WITH(mc), "0.6",
	  "MiniCache: interpolation t between the two layers' directions" },
	{ "retain", NULL, K_FRAC, C_NONE, F_ALWAYS | F_PCT, FIELD(mc_keep), 0, 0, 1, 100, NULL,
	  WITH(mc), "5%", "MiniCache: share of tokens per (pair, head) kept unmerged" },
	{ "rank", NULL, K_UINT, C_NONE, 0, FIELD(rank), 0, 0, 255, 1, NULL, 0, "0 (off)",
	  "K and V of each (layer, KV head) as a truncated SVD of this rank" },
	{ "factors", NULL, K_FLAG, C_NONE, 0, FIELD(lowrank), KVCD_LOWRANK_INT8, 0, 0, 1,
	  factors_names, 0, "dtype",
	  "low-rank factors in the engine's dtype, or int8 rows with "
	  "an f32 scale each" },
	{ "svd", NULL, K_FLAG, C_NONE, 0, FIELD(lowrank), KVCD_LOWRANK_LAYER, 0, 0, 1, svd_names, 0,
	  "head", "one SVD per (layer, KV head), or per layer across its heads" },
	{ "tensor", NULL, K_FLAG, C_NONE, 0, FIELD(lowrank), KVCD_LOWRANK_TUCKER, 0, 0, 1,
	  tensor_names, 0, "none",
	  "each layer's K and V as one [tokens][heads][head_dim] tensor: a Tucker core and a "
	  "factor per mode (higher-order SVD), each mode's rank chosen by energy=, the tokens' "
	  "at most rank=" },
	{ "learned", NULL, K_FLAG, C_NONE, 0, FIELD(lowrank), KVCD_LOWRANK_LEARNED, 0, 0, 1,
	  off_on_names, 0, "off",
	  "K and V rows as coefficients over the namespace's basis learned by `kvcctl "
	  "calibrate` (at most rank= per (layer, KV head), fewer where the basis has fewer), "
	  "stored once instead of in every block; coefficients in the engine's dtype or, with "
	  "factors=int8, int8" },
	{ "entropy", NULL, K_FLAG, C_NONE, 0, FIELD(lowrank), KVCD_LOWRANK_ENTROPY, 0, 0, 1,
	  off_on_names, 0, "off",
	  "kbits/vbits coefficients quantized on the step of their bits with no range to fit, "
	  "then range coded: smaller blocks for the same error, sized by their values" },
	{ "energy", NULL, K_FRAC, C_NONE, F_WHOLE | F_PCT, FIELD(energy), 0, 0.01, 1, 100, NULL, 0,
	  "off",
	  "rank= becomes a cap: each K or V takes the smallest rank keeping this share "
	  "of its squared singular values" },
	{ "select", NULL, K_ENUM, C_ALL, 0, FIELD(select), 0, 0, 0, 1, select_names, 0, "none",
	  "token selection: StreamingLLM (recent), key norm, H2O (the engine's accumulated "
	  "attention), SnapKV (the engine's observation-window queries)" },
	{ "keep", NULL, K_FRAC, C_ALL, F_ALWAYS | F_PCT, FIELD(keep), 0, 1e-4, 1, 1e4, NULL,
	  WITH(select), "50%", "select: share of each block's tokens kept (mean over heads)" },
	{ "window", NULL, K_UINT, C_ALL, F_ALWAYS, FIELD(window), 0, 0, 65535, 1, NULL,
	  WITH(select), "0", "select: the block's last tokens, always kept" },
	{ "budget", NULL, K_ENUM, C_ALL, 0, FIELD(budget), 0, 0, 0, 1, budget_names, 0, "uniform",
	  "select: counts per (layer, head): equal, PyramidKV, Ada-KV, or by head role (streaming "
	  "heads keep sinks and window, retrieval heads share the rest)" },
	{ "merge", NULL, K_ENUM, C_ALL, 0, FIELD(merge), 0, 0, 0, 1, merge_names, 0, "none",
	  "select: fold dropped tokens into the kept token of most similar key; key also keeps "
	  "the attention mass as a bias" },
	{ "cold", NULL, K_UINT, C_ALL, 0, FIELD(cold), 0, 2, 8, 1, NULL, 0, "off",
	  "select: keep the dropped tokens too, as ints of this many bits" },
	{ "kernel", NULL, K_UINT, C_ALL, F_ODD, FIELD(kernel), 0, 1, 63, 1, NULL, 0, "none",
	  "snapkv: max-pooling width over neighbouring tokens" },
	{ "summary", "bounds", K_ENUM, C_ALL, 0, FIELD(summary), 0, 0, 0, 1, summary_names, 0,
	  "none",
	  "a SELECT summary of the block's keys: Quest's bounds, or the keys of largest "
	  "norm in f16 or int8" },
	{ "page", NULL, K_UINT, C_ALL, 0, FIELD(page), 0, 1, 255, 1, NULL, 0, "16",
	  "summary: tokens per page" },
	{ "reps", NULL, K_UINT, C_ALL, 0, FIELD(reps), 0, 1, 16, 1, NULL, 0, "reps: 2, reps8: 4",
	  "summary=reps, reps8: keys kept per page" },
	{ "sink", NULL, K_UINT, C_ALL, 0, FIELD(sink), 0, 0, 65535, 1, NULL, 0, "0",
	  "the sequence's first tokens, kept exact (and always kept by select)" },
	{ "outliers", NULL, K_UINT, C_QUANT, 0, FIELD(outliers), 0, 0, 65535, 1, NULL, 0, "0",
	  "tokens of largest key magnitude per (layer, head), kept exact" },
	{ "rotate", NULL, K_FLAG, C_QUANT, 0, FIELD(rotate), KVCD_XFORM_HADAMARD, 0, 0, 1,
	  off_on_rotate, 0, "none",
	  "Walsh-Hadamard rotation of each token's channels before quantizing (power-of-two "
	  "head_dim)" },
	{ "virtual", NULL, K_FLAG, C_QUANT, 0, FIELD(rotate), KVCD_XFORM_VIRTUAL, 0, 0, 1,
	  virtual_names, 0, "none",
	  "a virtual token: each channel's mean over the rows quantized per token, kept in the "
	  "engine's dtype and subtracted before quantizing, so outlier channels no longer "
	  "stretch every token's range" },
	{ "sparse", NULL, K_FRAC, C_QUANT, 0, FIELD(sparse_ppm), 0, 0, 0.1, 1e6, NULL, 0, "0",
	  "share of quantized values of largest magnitude kept exact (KVQuant's dense-and-sparse)" },
	{ "hibits", NULL, K_UINT, C_QUANT, F_ZERO_OFF, FIELD(hibits), 0, 2, 8, 1, NULL, 0,
	  "0 (off)", "bits of the tokens the STORE's importance scores rank highest (MiKV)" },
	{ "hipct", NULL, K_UINT, C_QUANT, 0, FIELD(hipct), 0, 1, 100, 1, NULL, 0, "10",
	  "hibits: percent of tokens that are important" },
	{ "rope", NULL, K_UINT, C_INT | C_KIVI, 0, FIELD(rope), 0, 0, 1e8, 1, NULL, 0, "0 (off)",
	  "the model's RoPE base: keys are quantized before RoPE (KVQuant)" },
	{ "resid", NULL, K_ENUM, C_KIVI, 0, FIELD(resid), 0, 0, 0, 1, resid_names, 0, "exact",
	  "kivi: the keys that do not fill a whole group, exact or quantized" },
	{ "params", NULL, K_ENUM, C_INT | C_KIVI, 0, FIELD(params), 0, 0, 0, 1, params_names, 0,
	  "f16", "group scale and zero as two f16, or two bytes against a per-unit reference" },
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

/* ---- rules about keys together ------------------------------------------------------------- */

#define SEEN(name) (seen & (1ull << key_index(name)))

static unsigned key_index(const char *name)
{
	for (unsigned i = 0; i < NKEYS; i++)
		if (!strcmp(keys[i].name, name))
			return i;
	return 63; /* never seen */
}

struct rule {
	bool (*bad)(const struct kvcd_policy *p, uint64_t seen);
	const char *why;
};

static bool r_hipct(const struct kvcd_policy *p, uint64_t seen)
{
	return SEEN("hipct") && !p->hibits;
}

static bool r_page(const struct kvcd_policy *p, uint64_t seen)
{
	return (SEEN("page") || SEEN("reps")) && !p->summary;
}

static bool r_reps(const struct kvcd_policy *p, uint64_t seen)
{
	return SEEN("reps") && p->summary == KVCD_SUMMARY_QUEST;
}

static bool r_mc(const struct kvcd_policy *p, uint64_t seen)
{
	return (SEEN("slerp") || SEEN("retain")) && !p->mc;
}

static bool r_rank(const struct kvcd_policy *p, uint64_t seen)
{
	return (SEEN("factors") || SEEN("svd") || SEEN("energy") || SEEN("tensor") ||
		SEEN("learned")) &&
	       !p->rank;
}

static bool r_learned(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return (p->lowrank & KVCD_LOWRANK_LEARNED) &&
	       (p->energy || (p->lowrank & (KVCD_LOWRANK_LAYER | KVCD_LOWRANK_TUCKER)));
}

static bool r_svd(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return (p->lowrank & KVCD_LOWRANK_LAYER) && (p->select || p->energy);
}

static bool r_tensor(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return (p->lowrank & KVCD_LOWRANK_TUCKER) &&
	       (p->select || !p->energy || (p->lowrank & ~KVCD_LOWRANK_TUCKER));
}

static bool r_energy(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->energy && p->merge;
}

static bool r_mc_alone(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->mc && (p->select || p->rank);
}

static bool r_coded(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->kind == KVCD_CODEC_NONE && (p->kbits || p->vbits) &&
	       (!p->kbits || !p->vbits || !kvcd_policy_learned(p) ||
		(p->lowrank & KVCD_LOWRANK_INT8));
}

static bool r_entropy(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return (p->lowrank & KVCD_LOWRANK_ENTROPY) && !kvcd_policy_coded(p);
}

static bool r_select(const struct kvcd_policy *p, uint64_t seen)
{
	return !p->select && (SEEN("keep") || SEEN("window") || SEEN("budget") || SEEN("merge") ||
			      SEEN("kernel") || SEEN("cold"));
}

static bool r_cold(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->cold && (p->merge || p->rank);
}

static bool r_rope(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->select && p->rope;
}

static bool r_sink(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->kind == KVCD_CODEC_NONE && p->sink && !p->select;
}

static bool r_kivi(const struct kvcd_policy *p, uint64_t seen)
{
	(void)seen;
	return p->kind == KVCD_CODEC_KIVI && !p->group;
}

static const struct rule rules[] = {
	{ r_hipct, "hipct needs hibits" },
	{ r_page, "page and reps need summary=quest, reps or reps8" },
	{ r_reps, "reps needs summary=reps or reps8" },
	{ r_mc, "slerp and retain need minicache=" },
	{ r_rank, "factors, svd, tensor, learned and energy need rank=" },
	{ r_learned, "learned takes its ranks from the basis: not with energy, svd=layer or "
		     "tensor" },
	{ r_svd,
	  "svd=layer needs every head's tokens and a fixed rank: not with select or energy" },
	{ r_tensor, "tensor=tucker takes every token, ranks by energy= and factors in the engine's "
		    "dtype: not with select, svd=layer or factors=int8, and energy= is needed" },
	{ r_energy, "energy picks ranks before merging: it does not compose with merge" },
	{ r_mc_alone, "minicache does not compose with select or rank yet" },
	{ r_coded, "bits, kbits and vbits on 'none' quantize learned=on's coefficients: both "
		   "kbits and vbits, with learned=on and without factors=int8" },
	{ r_entropy, "entropy codes learned=on's kbits/vbits coefficients: it needs both" },
	{ r_select, "keep, window, budget, merge, kernel and cold need select=" },
	{ r_cold, "cold keeps the dropped tokens: it does not compose with merge or rank" },
	{ r_rope, "rope does not compose with select (kept tokens are not contiguous)" },
	{ r_sink, "'none' takes sink only with select=" },
	{ r_kivi, "kivi needs a group of 1..65535 tokens" },
};

/* ---- parsing ---------------------------------------------------------------------------------- */

static uint64_t get_field(const struct kvcd_policy *p, uint16_t off, uint8_t size)
{
	const uint8_t *f = (const uint8_t *)p + off;
	uint32_t v32;
	uint16_t v16;

	if (size == 4) {
		memcpy(&v32, f, 4);
		return v32;
	}
	if (size == 2) {
		memcpy(&v16, f, 2);
		return v16;
	}
	return *f;
}

static void set_field(struct kvcd_policy *p, uint16_t off, uint8_t size, uint64_t v)
{
	uint8_t *f = (uint8_t *)p + off;
	uint32_t v32 = (uint32_t)v;
	uint16_t v16 = (uint16_t)v;

	if (size == 4)
		memcpy(f, &v32, 4);
	else if (size == 2)
		memcpy(f, &v16, 2);
	else
		*f = (uint8_t)v;
}

static int name_index(const char *const *names, const char *v)
{
	for (int i = 0; names[i]; i++)
		if (!strcmp(names[i], v))
			return i;
	return -1;
}

static const char *name_at(const char *const *names, uint64_t v)
{
	for (uint64_t i = 0; names[i]; i++)
		if (i == v)
			return names[i];
	return "?";
}

/* What @k accepts, for error messages and the docs. */
static void describe(const struct key *k, char *buf, size_t len)
{
	size_t o = 0;

	switch (k->type) {
	case K_UINT:
		snprintf(buf, len, "%s%.0f..%.0f%s", k->flags & F_ODD ? "odd, " : "", k->lo, k->hi,
			 k->flags & F_ZERO_OFF ? " (0: off)" : "");
		break;
	case K_FRAC:
		snprintf(buf, len, "%g..%g, or %g%%..%g%%%s", k->lo, k->hi, k->lo * 100,
			 k->hi * 100, k->flags & F_WHOLE ? " (whole percents)" : "");
		break;
	default:
		buf[0] = '\0';
		for (int i = 0; k->names[i] && o < len; i++)
			o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "", k->names[i]);
	}
}

/* A fraction, or a percentage with a trailing %. */
static int fraction(const char *v, double *out)
{
	char *end;
	double f = strtod(v, &end);

	if (end != v && *end == '%' && !end[1]) {
		f /= 100;
		end++;
	}
	*out = f;
	return end == v || *end ? -EINVAL : 0;
}

/* The stored value of @v for @k, or -EINVAL. */
static int value_of(const struct key *k, const char *v, uint64_t *out)
{
	unsigned long long n;
	double f;
	char *end;
	int i;

	switch (k->type) {
	case K_UINT:
		if (!*v || *v == '-' || *v == '+')
			return -EINVAL;
		errno = 0;
		n = strtoull(v, &end, 10);
		if (errno || *end || (double)n > k->hi ||
		    ((double)n < k->lo && !(n == 0 && (k->flags & F_ZERO_OFF))) ||
		    ((k->flags & F_ODD) && !(n & 1)))
			return -EINVAL;
		*out = n + (k->flags & F_BIAS ? 1 : 0);
		return 0;
	case K_FRAC:
		if (fraction(v, &f) || !(f >= k->lo && f <= k->hi))
			return -EINVAL;
		if ((k->flags & F_WHOLE) && fabs(f * k->scale - round(f * k->scale)) > 1e-9)
			return -EINVAL;
		*out = (uint64_t)(f * k->scale + 0.5);
		return 0;
	default:
		i = name_index(k->names, v);
		if (i < 0)
			return -EINVAL;
		*out = (uint64_t)i;
		return 0;
	}
}

static int set_kind(const char *name, struct kvcd_policy *p)
{
	memset(p, 0, sizeof(*p));
	if (!strcmp(name, "none") || !strcmp(name, "raw")) {
		p->kind = KVCD_CODEC_NONE;
	} else if (!strcmp(name, "int")) {
		p->kind = KVCD_CODEC_INT;
		p->kbits = p->vbits = 8;
		p->group = 64;
	} else if (!strncmp(name, "int", 3) && name[3] >= '2' && name[3] <= '8' && !name[4]) {
		p->kind = KVCD_CODEC_INT;
		p->kbits = p->vbits = (uint8_t)(name[3] - '0');
		p->group = 64;
	} else if (!strcmp(name, "fp8")) {
		p->kind = KVCD_CODEC_FP8;
	} else if (!strcmp(name, "kivi")) {
		p->kind = KVCD_CODEC_KIVI;
		p->kbits = p->vbits = 4;
		p->group = 32;
	} else {
		return -EINVAL;
	}
	return 0;
}

static int set_key(struct kvcd_policy *p, const char *name, const char *v, uint64_t *seen,
		   char *why, size_t whylen)
{
	const struct key *k = NULL;
	char what[96];
	uint64_t x;

	for (unsigned i = 0; i < NKEYS && !k; i++)
		if (!strcmp(keys[i].name, name) ||
		    (keys[i].alias && !strcmp(keys[i].alias, name))) {
			k = &keys[i];
			*seen |= 1ull << i;
		}
	if (!k)
		return WHY("unknown option '%s' (docs/policies.md lists them)", name);
	if (!(k->codecs & (1u << p->kind)))
		return WHY("'%s' does not apply to %s", name, codec_names[p->kind]);
	if (value_of(k, v, &x)) {
		describe(k, what, sizeof(what));
		return WHY("%s=%s: %s", name, v, what);
	}
	if (k->type == K_FLAG) {
		uint64_t f = get_field(p, k->off, k->size);

		x = x ? f | k->mask : f & ~(uint64_t)k->mask;
	}
	set_field(p, k->off, k->size, x);
	if (k->off2)
		set_field(p, k->off2, k->size, x);
	return 0;
}

/* Defaults that depend on other keys, for the keys the string did not give. */
static void defaults(struct kvcd_policy *p, uint64_t seen)
{
	if (p->select && !SEEN("keep"))
		p->keep = 5000;
	if (p->summary && !SEEN("page"))
		p->page = 16;
	if (p->summary == KVCD_SUMMARY_REPS && !SEEN("reps"))
		p->reps = 2;
	if (p->summary == KVCD_SUMMARY_REPS8 && !SEEN("reps"))
		p->reps = 4;
	if (p->mc && !SEEN("slerp"))
		p->mc_t = 60;
	if (p->mc && !SEEN("retain"))
		p->mc_keep = 5;
	if (p->hibits && !SEEN("hipct"))
		p->hipct = 10;
}

int kvcd_policy_parse(const char *s, struct kvcd_policy *p, char *why, size_t whylen)
{
	char buf[256], *opts, *tok, *save = NULL;
	uint64_t seen = 0;
	int err;

	if (!s || strlen(s) >= sizeof(buf))
		return WHY("policy too long");
	strcpy(buf, s);
	opts = strchr(buf, ':');
	if (opts)
		*opts++ = '\0';
	if (set_kind(buf, p))
		return WHY("unknown codec '%s' (none, int, int2..int8, fp8, kivi)", buf);
	for (tok = opts ? strtok_r(opts, ",", &save) : NULL; tok;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');

		if (!eq)
			return WHY("'%s' is not key=value", tok);
		*eq = '\0';
		err = set_key(p, tok, eq + 1, &seen, why, whylen);
		if (err)
			return err;
	}
	for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
		if (rules[i].bad(p, seen))
			return WHY("%s", rules[i].why);
	defaults(p, seen);
	return 0;
}

/* ---- the canonical string ------------------------------------------------------------------- */

static bool shown(const struct kvcd_policy *p, const struct key *k, uint64_t v)
{
	bool same = p->kbits == p->vbits;

	if (!strcmp(k->name, "bits"))
		return p->kind == KVCD_CODEC_INT && same;
	if (!strcmp(k->name, "kbits") || !strcmp(k->name, "vbits"))
		return p->kind == KVCD_CODEC_KIVI || (p->kind == KVCD_CODEC_INT && !same) ||
		       (p->kind == KVCD_CODEC_NONE && v);
	if (k->type == K_FLAG)
		return v & k->mask;
	return v || ((k->flags & F_ALWAYS) && get_field(p, k->with, 1));
}

void kvcd_policy_format(const struct kvcd_policy *p, char *buf, size_t len)
{
	size_t o;
	char sep = ':';

	if (p->kind > KVCD_CODEC_KIVI) {
		snprintf(buf, len, "unknown(%u)", p->kind);
		return;
	}
	o = (size_t)snprintf(buf, len, "%s", codec_names[p->kind]);
	for (size_t i = 0; i < NKEYS && o < len; i++) {
		const struct key *k = &keys[i];
		uint64_t v = get_field(p, k->off, k->size);
		size_t room = len - o;

		if (!(k->codecs & (1u << p->kind)) || !shown(p, k, v))
			continue;
		switch (k->type) {
		case K_UINT:
			o += (size_t)snprintf(
				buf + o, room, "%c%s=%llu", sep, k->name,
				(unsigned long long)(v - (k->flags & F_BIAS ? 1 : 0)));
			break;
		case K_FRAC:
			o += (size_t)snprintf(
				buf + o, room, k->flags & F_PCT ? "%c%s=%g%%" : "%c%s=%g", sep,
				k->name, (double)v / k->scale * (k->flags & F_PCT ? 100 : 1));
			break;
		case K_FLAG:
			o += (size_t)snprintf(buf + o, room, "%c%s=%s", sep, k->name, k->names[1]);
			break;
		default:
			o += (size_t)snprintf(buf + o, room, "%c%s=%s", sep, k->name,
					      name_at(k->names, v));
		}
		sep = ',';
	}
}

/* ---- the documentation ------------------------------------------------------------------------ */

static void codecs_of(uint8_t c, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	if (c == C_ALL) {
		snprintf(buf, len, "all");
		return;
	}
	for (int i = 0; codec_names[i] && o < len; i++)
		if (c & (1u << i))
			o += (size_t)snprintf(buf + o, len - o, "%s%s", o ? ", " : "",
					      codec_names[i]);
}

void kvcd_policy_doc(FILE *f)
{
	char what[96], where[32];

	fprintf(f, "# Compression policies\n\n"
		   "<!-- generated by `kvccodec-bench policies` from daemon/codec/policy.c; "
		   "`make docs` rewrites it, `make test` checks it -->\n\n"
		   "A policy is `codec[:key=value,...]`, set per namespace (`policy =` in the "
		   "config, `kvcctl --ns NAME policy P`) or registered by an engine "
		   "(`kvc_policy()`).\n\n"
		   "Codecs: `none` (raw, or the token-level techniques alone), `int` and "
		   "`int2`..`int8` (per-token groups, 8 bits unless named), `fp8` (e4m3 with an "
		   "f16 scale per group), `kivi` (K per channel, V per token).\n\n"
		   "| key | values | codecs | default | what it does |\n"
		   "|---|---|---|---|---|\n");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct key *k = &keys[i];

		describe(k, what, sizeof(what));
		codecs_of(k->codecs, where, sizeof(where));
		fprintf(f, "| `%s`%s%s%s | %s | %s | %s | %s |\n", k->name, k->alias ? " (`" : "",
			k->alias ? k->alias : "", k->alias ? "`)" : "", what, where, k->dflt,
			k->help);
	}
	fprintf(f, "\nFractions may be written as percents (`keep=25%%`). Keys together:\n\n");
	for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++)
		fprintf(f, "- %s\n", rules[i].why);
	fprintf(f, "\nThe canonical form (what `kvcctl policy` and STATS print) lists the keys in "
		   "the order above.\n");
}

bool kvcd_policy_spans(const struct kvcd_policy *p, const struct kvcp_layout *l)
{
	return p->kind != KVCD_CODEC_NONE && l->kv_heads > 1 && p->group > l->head_dim &&
	       (uint32_t)l->kv_heads * l->head_dim <= UINT16_MAX;
}

int kvcd_policy_check(const struct kvcd_policy *p, const struct kvcp_layout *l, char *why,
		      size_t whylen)
{
	bool quant = p->kind == KVCD_CODEC_INT || p->kind == KVCD_CODEC_KIVI;
	uint32_t dim;

	if (!kvcp_layout_bytes(l))
		return WHY("invalid layout");
	if (p->kind > KVCD_CODEC_KIVI)
		return WHY("unknown codec %u", p->kind);
	if (p->summary > KVCD_SUMMARY_REPS8 || (p->summary && !p->page) ||
	    (!p->summary && p->page) || (p->summary >= KVCD_SUMMARY_REPS) != (p->reps > 0) ||
	    p->reps > 16)
		return WHY("bad summary");
	if ((p->rank && p->kind != KVCD_CODEC_NONE) || (p->lowrank && !p->rank) ||
	    (p->lowrank & ~(KVCD_LOWRANK_INT8 | KVCD_LOWRANK_LAYER | KVCD_LOWRANK_TUCKER |
			    KVCD_LOWRANK_LEARNED | KVCD_LOWRANK_ENTROPY)) ||
	    ((p->lowrank & KVCD_LOWRANK_ENTROPY) && !kvcd_policy_coded(p)) ||
	    ((p->lowrank & KVCD_LOWRANK_LEARNED) &&
	     (p->energy || (p->lowrank & (KVCD_LOWRANK_LAYER | KVCD_LOWRANK_TUCKER)))) ||
	    ((p->lowrank & KVCD_LOWRANK_LAYER) && (p->select || p->energy)) ||
	    ((p->lowrank & KVCD_LOWRANK_TUCKER) &&
	     (p->select || !p->energy || (p->lowrank & ~KVCD_LOWRANK_TUCKER))) ||
	    (p->energy && (!p->rank || p->energy > 100 || p->merge)))
		return WHY("bad rank");
	if ((p->mc && (p->kind != KVCD_CODEC_NONE || p->select || p->rank || p->mc_t > 100 ||
		       p->mc_keep > 100 || p->mc > l->layers)) ||
	    (!p->mc && (p->mc_t || p->mc_keep)))
		return WHY("bad minicache (first merged layer %d of %u layers)", (int)p->mc - 1,
			   l->layers);
	if (p->select > KVCD_SELECT_SNAPKV || p->budget > KVCD_BUDGET_HEADS ||
	    p->merge > KVCD_MERGE_VALUE || (p->kernel && !(p->kernel & 1)) || p->keep > 10000 ||
	    (p->select && (!p->keep || p->rope)) ||
	    (!p->select && (p->keep || p->window || p->budget || p->merge || p->kernel)) ||
	    (p->cold && (!p->select || p->cold < 2 || p->cold > 8 || p->merge || p->rank)))
		return WHY("bad selection fields");
	if (p->kind == KVCD_CODEC_NONE && (p->kbits || p->vbits) &&
	    (!kvcd_policy_coded(p) || p->kbits < 2 || p->kbits > 8 || p->vbits < 2 || p->vbits > 8))
		return WHY("'none' takes kbits and vbits (2..8) only with learned=on");
	if (p->kind == KVCD_CODEC_NONE)
		return (p->outliers | p->rotate | p->group | p->hibits | p->hipct | p->sparse_ppm |
			p->rope | p->resid | p->params) ||
				       (p->sink && !p->select)
			       ? WHY("'none' with codec options")
			       : 0;
	if (quant && (p->kbits < 2 || p->kbits > 8 || p->vbits < 2 || p->vbits > 8))
		return WHY("bits outside 2..8");
	if (p->kind == KVCD_CODEC_FP8 && (p->kbits || p->vbits))
		return WHY("fp8 has no bit widths");
	if (p->kind == KVCD_CODEC_KIVI && !p->group)
		return WHY("kivi needs a group");
	dim = kvcd_policy_spans(p, l) ? (uint32_t)l->kv_heads * l->head_dim : l->head_dim;
	if (p->rotate > (KVCD_XFORM_HADAMARD | KVCD_XFORM_VIRTUAL) ||
	    ((p->rotate & KVCD_XFORM_HADAMARD) && (dim & (dim - 1))))
		return WHY("rotate=hadamard needs a power-of-two %s (got %u)",
			   dim == l->head_dim ? "head_dim" : "kv_heads x head_dim", dim);
	if (p->rope && l->head_dim % 2)
		return WHY("rope needs an even head_dim (got %u)", l->head_dim);
	if (p->rope && p->kind == KVCD_CODEC_FP8)
		return WHY("rope applies to int and kivi, not fp8");
	if (p->sparse_ppm > 100000)
		return WHY("sparse above 10%%");
	if (p->resid > 1 || (p->resid && p->kind != KVCD_CODEC_KIVI))
		return WHY("bad resid");
	if (p->params > 1 || (p->params && !quant))
		return WHY("bad params");
	if ((p->hibits && (p->hibits < 2 || p->hibits > 8 || !p->hipct || p->hipct > 100)) ||
	    (!p->hibits && p->hipct))
		return WHY("bad hibits/hipct");
	return 0;
}
