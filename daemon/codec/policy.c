/* policy.c - compression policies as strings: "codec[:key=value,...]".
 *
 *   none                       raw
 *   int[:bits=B]  int2..int8   fixed precision, per token, groups along head_dim (default 8
 *                              bits, group 64); a group longer than head_dim spans the heads
 *                              of the token's row (kvcd_policy_spans)
 *   fp8                        e4m3, f16 scale per group (default group = head_dim)
 *   kivi[:kbits=B,vbits=B]     K per channel, V per token (default 4 and 4 bits, group 32)
 * keys: bits, kbits, vbits, group, sink, outliers, rotate=hadamard|none, sparse=F (fraction,
 * or percent with a trailing %), hibits, hipct, rope=BASE (keys quantized before RoPE),
 * resid=exact|quant (kivi), params=f16|u8 (group scale and zero as two f16 or two bytes).
 * Token selection, with any codec ("none:select=h2o,keep=50%" keeps half the tokens raw):
 * select=recent|keynorm|h2o|snapkv, keep=F (fraction of each block's tokens, or percent
 * with %; default 50%), window=N (the block's last N tokens always kept), sink=N (the
 * sequence's first N tokens always kept, and exact), budget=uniform|pyramid|adakv,
 * bounds=quest|reps|reps8 (any policy, "none:bounds=quest" included): keep a summary of the
 * block's keys so SELECT can score it (an extra pass over the keys at STORE), per page=N
 * tokens (default 16): Quest's channel-wise bounds, or the reps=R keys of largest norm, f16
 * (reps; default 2: the same bytes as Quest's bounds) or int8 with a scale per key (reps8;
 * default 4: about the same bytes again).
 * rank=R (with none): K and V of each (layer, KV head) as a truncated SVD of rank R;
 * factors=int8 keeps its factors as int8 rows with a scale each (default: the engine's dtype);
 * svd=layer takes one SVD per layer across its KV heads (not with select= or energy=);
 * energy=F (fraction, or percent with %) makes rank= a cap: each K or V takes the smallest
 * rank that keeps that share of its squared singular values.
 * cold=B (with select=): the dropped tokens are not lost but demoted, kept as B-bit ints
 * (2..8, params=u8) after the kept ones; a FETCH then returns every token.
 * minicache=L (with none): layers L and L+1 (then L+2 and L+3, ...) share one direction per
 * token (MiniCache), slerp=T (default 0.6), retain=P (tokens kept unmerged, default 5%).
 * merge=none|key|value, kernel=K (snapkv max-pooling width, odd; default none: SnapKV's
 * long-context 7 costs a factor 3 in perplexity on stories260K).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "select.h"

/* by KVCD_SUMMARY_* */
static const char *const bounds_name[] = { "none", "quest", "reps", "reps8" };

#define WHY(...) (snprintf(why, whylen, __VA_ARGS__), -EINVAL)

static int num(const char *v, unsigned long max, unsigned long *out)
{
	char *end;

	if (!*v || *v == '-' || *v == '+')
		return -EINVAL;
	errno = 0;
	*out = strtoul(v, &end, 10);
	return errno || *end || *out > max ? -EINVAL : 0;
}

/* A fraction, or a percentage with a trailing %, within [@lo, @hi]. */
static int fraction(const char *v, double lo, double hi, double *out)
{
	char *end;
	double f = strtod(v, &end);

	if (end != v && *end == '%' && !end[1]) {
		f /= 100;
		end++;
	}
	*out = f;
	return end == v || *end || !(f >= lo && f <= hi) ? -EINVAL : 0;
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

static int set_key(struct kvcd_policy *p, const char *k, const char *v, char *why, size_t whylen)
{
	unsigned long n;
	bool quant = p->kind == KVCD_CODEC_INT || p->kind == KVCD_CODEC_KIVI;

	if (!strcmp(k, "bounds")) {
		if (strcmp(v, "quest") && strcmp(v, "reps") && strcmp(v, "reps8") &&
		    strcmp(v, "none"))
			return WHY("bounds=%s: quest, reps, reps8 or none", v);
		p->bounds = !strcmp(v, "quest") ? KVCD_SUMMARY_QUEST : !strcmp(v, "reps") ?
			    KVCD_SUMMARY_REPS : !strcmp(v, "reps8") ? KVCD_SUMMARY_REPS8 : 0;
		p->page = p->bounds ? (p->page ? p->page : 16) : 0;
		p->reps = p->bounds == KVCD_SUMMARY_REPS ? (p->reps ? p->reps : 2) :
			  p->bounds == KVCD_SUMMARY_REPS8 ? (p->reps ? p->reps : 4) : 0;
		return 0;
	}
	if (!strcmp(k, "reps")) {
		if (num(v, 16, &n) || !n)
			return WHY("reps=%s: keys kept per page, 1..16", v);
		p->reps = (uint8_t)n;
		return 0;
	}
	if (!strcmp(k, "energy")) {
		double f;

		if (fraction(v, 0.01, 1, &f) || fabs(f * 100 - round(f * 100)) > 1e-9)
			return WHY("energy=%s: a whole percent, 1%%..100%% (or 0.01..1)", v);
		p->energy = (uint8_t)round(f * 100);
		return 0;
	}
	if (!strcmp(k, "svd")) {
		if (strcmp(v, "head") && strcmp(v, "layer"))
			return WHY("svd=%s: head (one per layer and KV head) or layer (across heads)",
				   v);
		p->lowrank = (uint8_t)(v[0] == 'l' ? p->lowrank | KVCD_LOWRANK_LAYER :
					   p->lowrank & ~KVCD_LOWRANK_LAYER);
		return 0;
	}
	if (!strcmp(k, "factors")) {
		if (strcmp(v, "int8") && strcmp(v, "dtype"))
			return WHY("factors=%s: int8 or dtype (the engine's)", v);
		p->lowrank = (uint8_t)(v[0] == 'i' ? p->lowrank | KVCD_LOWRANK_INT8 :
					   p->lowrank & ~KVCD_LOWRANK_INT8);
		return 0;
	}
	if (!strcmp(k, "rank")) {
		if (p->kind != KVCD_CODEC_NONE)
			return WHY("rank applies to none, not to %s (factors=int8 quantizes the "
				   "factors)", "a quantizing codec");
		if (num(v, 255, &n))
			return WHY("rank=%s: 0..255 (0: off)", v);
		p->rank = (uint8_t)n;
		return 0;
	}
	if (!strcmp(k, "minicache") || !strcmp(k, "slerp") || !strcmp(k, "retain")) {
		double f;

		if (p->kind != KVCD_CODEC_NONE)
			return WHY("%s applies to none", k);
		if (k[0] == 'm') {
			if (num(v, 254, &n))
				return WHY("minicache=%s: the first merged layer, 0..254", v);
			p->mc = (uint8_t)(n + 1);
			p->mc_t = p->mc_t ? p->mc_t : 60;
			p->mc_keep = p->mc_keep ? p->mc_keep : 5;
		} else if (k[0] == 's') {
			if (fraction(v, 0, 1, &f))
				return WHY("slerp=%s: t in 0..1", v);
			p->mc_t = (uint8_t)(f * 100 + 0.5);
		} else {
			if (fraction(v, 0, 1, &f))
				return WHY("retain=%s: a fraction 0..1 (or percent)", v);
			p->mc_keep = (uint8_t)(f * 100 + 0.5);
		}
		return 0;
	}
	if (!strcmp(k, "page")) {
		if (num(v, 255, &n) || !n)
			return WHY("page=%s: tokens per bounds page, 1..255", v);
		p->page = (uint8_t)n;
		return 0;
	}
	if (p->kind == KVCD_CODEC_NONE && strcmp(k, "sink") && strcmp(k, "select") &&
	    strcmp(k, "keep") && strcmp(k, "window") && strcmp(k, "budget") &&
	    strcmp(k, "merge") && strcmp(k, "kernel") && strcmp(k, "cold"))
		return WHY("'none' takes only selection, rank, minicache and bounds options (got "
			   "'%s')", k);
	if (!strcmp(k, "select")) {
		static const char *names[] = { "none", "recent", "keynorm", "h2o", "snapkv" };

		for (n = 0; n < 5 && strcmp(v, names[n]); n++)
			;
		if (n == 5)
			return WHY("select=%s: recent, keynorm, h2o, snapkv or none", v);
		p->select = (uint8_t)n;
		if (n && !p->keep)
			p->keep = 5000;
	} else if (!strcmp(k, "keep")) {
		double f;

		if (fraction(v, 1e-4, 1, &f))
			return WHY("keep=%s: a fraction 0.0001..1 (or 0.01..100%%)", v);
		p->keep = (uint16_t)(f * 1e4 + 0.5);
	} else if (!strcmp(k, "window")) {
		if (num(v, 65535, &n))
			return WHY("window=%s: a token count 0..65535", v);
		p->window = (uint16_t)n;
	} else if (!strcmp(k, "budget")) {
		if (strcmp(v, "uniform") && strcmp(v, "pyramid") && strcmp(v, "adakv"))
			return WHY("budget=%s: uniform, pyramid or adakv", v);
		p->budget = v[0] == 'u' ? KVCD_BUDGET_UNIFORM : v[0] == 'p' ? KVCD_BUDGET_PYRAMID :
					  KVCD_BUDGET_ADAKV;
	} else if (!strcmp(k, "cold")) {
		if (num(v, 8, &n) || n < 2)
			return WHY("cold=%s: bits of the demoted tokens, 2..8", v);
		p->cold = (uint8_t)n;
	} else if (!strcmp(k, "merge")) {
		if (strcmp(v, "none") && strcmp(v, "key") && strcmp(v, "value"))
			return WHY("merge=%s: none, key or value", v);
		p->merge = v[0] == 'k' ? KVCD_MERGE_KEY : v[0] == 'v' ? KVCD_MERGE_VALUE :
					 KVCD_MERGE_NONE;
	} else if (!strcmp(k, "kernel")) {
		if (num(v, 63, &n) || !(n & 1))
			return WHY("kernel=%s: an odd width 1..63", v);
		p->kernel = (uint8_t)n;
	} else if (!strcmp(k, "bits") || !strcmp(k, "kbits") || !strcmp(k, "vbits")) {
		if (!quant)
			return WHY("'%s' applies to int and kivi, not fp8", k);
		if (num(v, 8, &n) || n < 2)
			return WHY("%s=%s: bits are 2..8", k, v);
		if (k[0] != 'v')
			p->kbits = (uint8_t)n;
		if (k[0] != 'k')
			p->vbits = (uint8_t)n;
	} else if (!strcmp(k, "group")) {
		if (num(v, 65535, &n) || (!n && p->kind == KVCD_CODEC_KIVI))
			return WHY("group=%s: 1..65535%s", v, p->kind == KVCD_CODEC_KIVI ? "" :
				   " (0: head_dim)");
		p->group = (uint16_t)n;
	} else if (!strcmp(k, "sink") || !strcmp(k, "outliers")) {
		if (num(v, 65535, &n))
			return WHY("%s=%s: a token count 0..65535", k, v);
		*(k[0] == 's' ? &p->sink : &p->outliers) = (uint16_t)n;
	} else if (!strcmp(k, "rotate")) {
		if (strcmp(v, "hadamard") && strcmp(v, "none"))
			return WHY("rotate=%s: hadamard or none", v);
		p->rotate = v[0] == 'h';
	} else if (!strcmp(k, "sparse")) {
		double f;

		if (fraction(v, 0, 0.1, &f))
			return WHY("sparse=%s: a fraction 0..0.1 (or 0..10%%)", v);
		p->sparse_ppm = (uint32_t)(f * 1e6 + 0.5);
	} else if (!strcmp(k, "hibits")) {
		if (num(v, 8, &n) || (n && n < 2))
			return WHY("hibits=%s: 2..8 (0: off)", v);
		p->hibits = (uint8_t)n;
		if (n && !p->hipct)
			p->hipct = 10;
	} else if (!strcmp(k, "rope")) {
		if (p->kind == KVCD_CODEC_FP8)
			return WHY("rope applies to int and kivi, not fp8");
		if (num(v, 100000000, &n))
			return WHY("rope=%s: the model's RoPE base, e.g. 10000 (0: off)", v);
		p->rope = (uint32_t)n;
	} else if (!strcmp(k, "resid")) {
		if (p->kind != KVCD_CODEC_KIVI)
			return WHY("resid applies to kivi");
		if (strcmp(v, "exact") && strcmp(v, "quant"))
			return WHY("resid=%s: exact or quant", v);
		p->resid = v[0] == 'q';
	} else if (!strcmp(k, "params")) {
		if (!quant)
			return WHY("params applies to int and kivi, not fp8");
		if (strcmp(v, "f16") && strcmp(v, "u8"))
			return WHY("params=%s: f16 or u8", v);
		p->params = v[0] == 'u';
	} else if (!strcmp(k, "hipct")) {
		if (num(v, 100, &n) || !n)
			return WHY("hipct=%s: 1..100", v);
		p->hipct = (uint8_t)n;
	} else {
		return WHY("unknown option '%s'", k);
	}
	return 0;
}

int kvcd_policy_parse(const char *s, struct kvcd_policy *p, char *why, size_t whylen)
{
	char buf[256], *opts, *tok, *save = NULL;
	int err;

	if (!s || strlen(s) >= sizeof(buf))
		return WHY("policy too long");
	strcpy(buf, s);
	opts = strchr(buf, ':');
	if (opts)
		*opts++ = '\0';
	if (set_kind(buf, p))
		return WHY("unknown codec '%s' (none, int, int2..int8, fp8, kivi)", buf);
	if (!opts)
		return 0;
	for (tok = strtok_r(opts, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');

		if (!eq)
			return WHY("'%s' is not key=value", tok);
		*eq = '\0';
		err = set_key(p, tok, eq + 1, why, whylen);
		if (err)
			return err;
	}
	if (p->hipct && !p->hibits)
		return WHY("hipct needs hibits");
	if ((p->page || p->reps) && !p->bounds)
		return WHY("page and reps need bounds=quest, reps or reps8");
	if (p->reps && p->bounds == KVCD_SUMMARY_QUEST)
		return WHY("reps needs bounds=reps or reps8");
	if (!p->mc && (p->mc_t || p->mc_keep))
		return WHY("slerp and retain need minicache=");
	if ((p->lowrank || p->energy) && !p->rank)
		return WHY("factors, svd and energy need rank=");
	if ((p->lowrank & KVCD_LOWRANK_LAYER) && (p->select || p->energy))
		return WHY("svd=layer needs every head's tokens and a fixed rank: not with select "
			   "or energy");
	if (p->energy && p->merge)
		return WHY("energy picks ranks before merging: it does not compose with merge");
	if (p->mc && (p->select || p->rank))
		return WHY("minicache does not compose with select or rank yet");
	if (!p->select && (p->keep || p->window || p->budget || p->merge || p->kernel || p->cold))
		return WHY("keep, window, budget, merge, kernel and cold need select=");
	if (p->cold && (p->merge || p->rank))
		return WHY("cold keeps the dropped tokens: it does not compose with merge or rank");
	if (p->select && p->rope)
		return WHY("rope does not compose with select (kept tokens are not contiguous)");
	if (p->kind == KVCD_CODEC_NONE && p->sink && !p->select)
		return WHY("'none' takes sink only with select=");
	return 0;
}

void kvcd_policy_format(const struct kvcd_policy *p, char *buf, size_t len)
{
	static const char *names[] = { "none", "int", "fp8", "kivi" };
	size_t o;

	if (p->kind > KVCD_CODEC_KIVI) {
		snprintf(buf, len, "unknown(%u)", p->kind);
		return;
	}
	o = (size_t)snprintf(buf, len, "%s", names[p->kind]);
#define ADD(...) (o += o < len ? (size_t)snprintf(buf + o, len - o, __VA_ARGS__) : 0)
	if (p->kind == KVCD_CODEC_NONE) {
		if (!p->select) {
			if (p->rank || p->bounds || p->mc)
				ADD(":");
			if (p->mc)
				ADD("minicache=%u,slerp=%g,retain=%u%%%s", p->mc - 1, p->mc_t / 100.0,
				    p->mc_keep, p->rank || p->bounds ? "," : "");
			if (p->rank)
				ADD("rank=%u%s%s", p->rank,
				    p->lowrank & KVCD_LOWRANK_INT8 ? ",factors=int8" : "",
				    p->lowrank & KVCD_LOWRANK_LAYER ? ",svd=layer" : "");
			if (p->energy)
				ADD(",energy=%u%%", p->energy);
			if (p->rank && p->bounds)
				ADD(",");
			if (p->bounds)
				ADD("bounds=%s,page=%u", bounds_name[p->bounds], p->page);
			if (p->reps)
				ADD(",reps=%u", p->reps);
			return;
		}
		ADD(":sink=%u", p->sink);
		if (p->rank)
			ADD(",rank=%u%s", p->rank,
			    p->lowrank & KVCD_LOWRANK_INT8 ? ",factors=int8" : "");
		if (p->energy)
			ADD(",energy=%u%%", p->energy);
	} else {
		ADD(":");
		if (p->kind == KVCD_CODEC_INT && p->kbits == p->vbits)
			ADD("bits=%u,", p->kbits);
		else if (p->kind != KVCD_CODEC_FP8)
			ADD("kbits=%u,vbits=%u,", p->kbits, p->vbits);
		ADD("group=%u", p->group);
	}
	if (p->select) {
		static const char *sel[] = { "none", "recent", "keynorm", "h2o", "snapkv" };
		static const char *bud[] = { "uniform", "pyramid", "adakv" };

		ADD(",select=%s,keep=%g%%,window=%u", p->select <= KVCD_SELECT_SNAPKV ?
		    sel[p->select] : "?", p->keep / 100.0, p->window);
		if (p->budget)
			ADD(",budget=%s", p->budget <= KVCD_BUDGET_ADAKV ? bud[p->budget] : "?");
		if (p->merge)
			ADD(",merge=%s", p->merge == KVCD_MERGE_KEY ? "key" : "value");
		if (p->cold)
			ADD(",cold=%u", p->cold);
		if (p->kernel)
			ADD(",kernel=%u", p->kernel);
	}
	if (p->bounds && (p->select || p->kind != KVCD_CODEC_NONE))
		ADD(",bounds=%s,page=%u", bounds_name[p->bounds], p->page);
	if (p->reps && (p->select || p->kind != KVCD_CODEC_NONE))
		ADD(",reps=%u", p->reps);
	if (p->kind == KVCD_CODEC_NONE)
		return;
	if (p->sink)
		ADD(",sink=%u", p->sink);
	if (p->outliers)
		ADD(",outliers=%u", p->outliers);
	if (p->rotate)
		ADD(",rotate=hadamard");
	if (p->sparse_ppm)
		ADD(",sparse=%g", p->sparse_ppm / 1e6);
	if (p->hibits)
		ADD(",hibits=%u,hipct=%u", p->hibits, p->hipct);
	if (p->rope)
		ADD(",rope=%u", p->rope);
	if (p->resid)
		ADD(",resid=quant");
	if (p->params)
		ADD(",params=u8");
#undef ADD
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
	if (p->bounds > KVCD_SUMMARY_REPS8 || (p->bounds && !p->page) || (!p->bounds && p->page) ||
	    (p->bounds >= KVCD_SUMMARY_REPS) != (p->reps > 0) || p->reps > 16)
		return WHY("bad bounds");
	if ((p->rank && p->kind != KVCD_CODEC_NONE) || (p->lowrank && !p->rank) ||
	    (p->lowrank & ~(KVCD_LOWRANK_INT8 | KVCD_LOWRANK_LAYER)) ||
	    ((p->lowrank & KVCD_LOWRANK_LAYER) && (p->select || p->energy)) ||
	    (p->energy && (!p->rank || p->energy > 100 || p->merge)))
		return WHY("bad rank");
	if ((p->mc && (p->kind != KVCD_CODEC_NONE || p->select || p->rank || p->mc_t > 100 ||
		       p->mc_keep > 100 || p->mc > l->layers)) || (!p->mc && (p->mc_t || p->mc_keep)))
		return WHY("bad minicache (first merged layer %d of %u layers)", (int)p->mc - 1,
			   l->layers);
	if (p->select > KVCD_SELECT_SNAPKV || p->budget > KVCD_BUDGET_ADAKV ||
	    p->merge > KVCD_MERGE_VALUE || (p->kernel && !(p->kernel & 1)) || p->keep > 10000 ||
	    (p->select && (!p->keep || p->rope)) ||
	    (!p->select && (p->keep || p->window || p->budget || p->merge || p->kernel)) ||
	    (p->cold && (!p->select || p->cold < 2 || p->cold > 8 || p->merge || p->rank)))
		return WHY("bad selection fields");
	if (p->kind == KVCD_CODEC_NONE)
		return (p->outliers | p->rotate | p->kbits | p->vbits | p->group | p->hibits |
			p->hipct | p->sparse_ppm | p->rope | p->resid | p->params) ||
		       (p->sink && !p->select) ? WHY("'none' with codec options") : 0;
	if (quant && (p->kbits < 2 || p->kbits > 8 || p->vbits < 2 || p->vbits > 8))
		return WHY("bits outside 2..8");
	if (p->kind == KVCD_CODEC_FP8 && (p->kbits || p->vbits))
		return WHY("fp8 has no bit widths");
	if (p->kind == KVCD_CODEC_KIVI && !p->group)
		return WHY("kivi needs a group");
	dim = kvcd_policy_spans(p, l) ? (uint32_t)l->kv_heads * l->head_dim : l->head_dim;
	if (p->rotate > 1 || (p->rotate && (dim & (dim - 1))))
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
