/* isa.h - which vector instructions the codec (and the daemon's checksum) may use.
 *
 * Every kernel takes an enum kvcd_isa and lowers it to what this CPU has (kvcd_isa_clamp), so
 * a caller may always pass a higher level; tests pass lower ones to reach each variant. The
 * levels are ordered: each includes the ones below it.
 */
#ifndef KVCD_ISA_H
#define KVCD_ISA_H

#include <stdbool.h>

enum kvcd_isa {
	KVCD_ISA_SCALAR = 0,
	KVCD_ISA_AVX2 = 1,	  /* AVX2 (with F16C where the CPU has it) */
	KVCD_ISA_AVX512 = 2,	  /* AVX-512 F and BW */
	KVCD_ISA_AVX512_VNNI = 3, /* AVX-512 VNNI on top: int8 dot products */
};

/* Best level this CPU supports (cached after the first call). */
enum kvcd_isa kvcd_isa_best(void);
/* @isa, lowered to kvcd_isa_best() when above it. */
enum kvcd_isa kvcd_isa_clamp(enum kvcd_isa isa);
const char *kvcd_isa_name(enum kvcd_isa isa);
/* AVX2 and F16C both present: the SIMD paths convert f16 in hardware. */
bool kvcd_has_f16c(void);

#endif /* KVCD_ISA_H */
