/* fuzz_policy.c - the policy string parser: any string is parsed or refused with a reason,
 * and what it accepts prints (kvcd_policy_format) to a string that parses back to the same
 * policy. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n)
{
	char s[KVCP_POLICY_MAX], f[KVCP_POLICY_MAX], why[128];
	struct kvcd_policy p, q;

	if (n >= sizeof(s))
		return 0;
	memcpy(s, data, n);
	s[n] = '\0';
	why[0] = '\0';
	if (kvcd_policy_parse(s, &p, why, sizeof(why))) {
		if (!why[0] || !memchr(why, 0, sizeof(why)))
			abort(); /* refused without a reason */
		return 0;
	}
	kvcd_policy_format(&p, f, sizeof(f));
	if (kvcd_policy_parse(f, &q, why, sizeof(why)) || memcmp(&p, &q, sizeof(p)))
		abort(); /* the canonical string is another policy */
	return 0;
}
