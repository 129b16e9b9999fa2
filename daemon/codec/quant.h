/* quant.h - group quantization kernels: pure functions over float arrays, no daemon state.
 *
 * Asymmetric min/max quantization to b bits (2..8) per group (FlexGen): for a group x[0..n)
 *   zero  = f16(min x),  scale = f16((max x - zero) / (2^b - 1))
 *   q[i]  = clamp(round_half_even((x[i] - zero) / scale), 0, 2^b - 1)
 *   x'[i] = q[i] * scale + zero
 * with scale and zero rounded to f16 before they are used, so the encoder and the decoder see
 * the same values. A constant group has scale 0 and decodes exactly to zero. Codes are packed
 * little-endian, LSB first, with no wasted bits (kvcd_pack / kvcd_unpack).
 *
 * Every kernel has a scalar reference and AVX2 / AVX-512 versions chosen at run time; the
 * SIMD versions produce the same bits as the reference (tests/unit_quant.c checks it).
 */
#ifndef KVCD_QUANT_H
#define KVCD_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

/* @n floats to symmetric int8 (scale absmax / 127, 0 for a zero row); returns the scale. */
float kvcd_to_i8(const float *x, uint32_t n, int8_t *o);

/* Quantize @n values of one group at @bits. Writes one code per byte to @q and the f16 scale
 * and zero. Returns 0, or -EINVAL for bits outside 2..8 or a non-finite input. */
int kvcd_quant_group(enum kvcd_isa isa, const float *x, size_t n, unsigned bits, uint8_t *q,
		     uint16_t *scale, uint16_t *zero);
/* The same in three phases over @ng groups of @n values each (group g at x + g * n), so a
 * caller can batch many groups and let independent groups overlap in the CPU:
 * ranges (-EINVAL on a non-finite value), then params (f16 scale and zero interleaved in @sz,
 * -ERANGE when f16 cannot hold them), then apply (codes, one per byte). Bit-identical to
 * kvcd_quant_group, which is these three for one group. */
int kvcd_quant_ranges(enum kvcd_isa isa, const float *x, size_t ng, size_t n, float *lo, float *hi);
int kvcd_quant_params(enum kvcd_isa isa, const float *lo, const float *hi, size_t ng, unsigned bits,
		      uint16_t *sz);
void kvcd_quant_apply(enum kvcd_isa isa, const float *x, size_t ng, size_t n, unsigned bits,
		      const uint16_t *sz, uint8_t *q);
/* One row of f16 values (@ng groups of @gch) ranged, parametrized and quantized in one
 * pass, with the bytes kvcd_quant_ranges, _params, _apply and kvcd_pack give: group g's f16
 * scale and zero (4 bytes) at @par + (g / @per) * @stride + (g % @per) * 4 and its codes,
 * packed, at @codes + (g / @per) * @stride + (g % @per) * @gch * @bits / 8 (@per groups to a
 * head, a head's output @stride bytes from the last). Only where kvcd_quant_row_f16_ok says
 * so (AVX-512 and F16C, 8 or 4 bits, groups of a multiple of 16): -EOPNOTSUPP elsewhere;
 * @x is room for the row as floats (@ng * @gch);
 * -EINVAL for an inf or nan, -ERANGE as kvcd_quant_params. */
bool kvcd_quant_row_f16_ok(enum kvcd_isa isa, size_t gch, unsigned bits);
/* The same from a row already in floats at @x (rotated, say), under the same conditions. The
 * inf-or-nan test sums each group, so floats whose sum overflows read as -EINVAL where the
 * three phases say -ERANGE; f16 values, rotated or not, cannot. */
int kvcd_quant_row_f32(enum kvcd_isa isa, float *x, size_t ng, size_t gch, size_t per,
		       unsigned bits, size_t stride, uint8_t *par, uint8_t *codes);
int kvcd_quant_row_f16(enum kvcd_isa isa, const uint8_t *src, size_t ng, size_t gch, size_t per,
		       unsigned bits, size_t stride, float *x, uint8_t *par, uint8_t *codes);
/* KIVI's keys of one head in one pass: @G token rows of @d f16 channels (row t at @src + t *
 * @rs) quantized per channel at @bits, with the bytes kvcd_quant_ranges, _params, _apply and
 * kvcd_pack give on the rows turned to [channel][token]: the d channels' f16 (scale, zero)
 * pairs to @par, their codes (G * @bits / 8 bytes each, in channel order) to @codes. Only
 * where kvcd_quant_chan_f16_ok says so (AVX-512 and F16C, 2, 4 or 8 bits, 8, 16 or 32 bytes
 * a channel, channels in 16s): -EOPNOTSUPP elsewhere; -EINVAL for an inf or a nan, -ERANGE as
 * kvcd_quant_params. @x is room for G * 16 floats. */
bool kvcd_quant_chan_f16_ok(enum kvcd_isa isa, size_t G, size_t d, unsigned bits);
int kvcd_quant_chan_f16(enum kvcd_isa isa, const uint8_t *src, size_t rs, size_t G, size_t d,
			unsigned bits, float *x, uint8_t *par, uint8_t *codes);
/* Compact parameters for @ng groups from their ranges: a 12-byte reference (f32 lowest zero,
 * zero step, largest scale) and 2 bytes per group (zero step count, then scale as 2^(-k/16) of
 * the largest), decoded to the f16 pairs in @sz that kvcd_quant_apply takes. Each group's
 * range stays covered (up to f16 rounding); scales are at most 2^(1/16) coarser than
 * kvcd_quant_params' and zeros up to 1/255 of the zeros' span lower. Returns 0, -EINVAL or
 * -ERANGE (f16 cannot hold a value). */
#define KVCD_QREF_BYTES 12
int kvcd_quant_params_u8(const float *lo, const float *hi, size_t ng, unsigned bits,
			 uint8_t ref[KVCD_QREF_BYTES], uint8_t *codes, uint16_t *sz);
/* The f16 pairs back from a reference and codes; -EBADMSG when they are out of range. */
int kvcd_quant_params_u8_read(const uint8_t ref[KVCD_QREF_BYTES], const uint8_t *codes, size_t ng,
			      uint16_t *sz);
static inline size_t kvcd_params_bytes(size_t ng, bool u8)
{
	return !ng ? 0 : u8 ? KVCD_QREF_BYTES + 2 * ng : 4 * ng;
}
/* x'[i] = q[i] * scale + zero. */
void kvcd_dequant_group(enum kvcd_isa isa, const uint8_t *q, size_t n, uint16_t scale,
			uint16_t zero, float *out);
/* KIVI keys back to token rows: @d channels of @n codes each (@q, [channel][token]), channel c
 * with the f16 scale and zero @par[2c], @par[2c + 1], into @n rows of @d floats @ts apart at
 * @out: the floats kvcd_dequant_group gives, a 16 x 16 tile of codes at a time. false where
 * this way does not apply (no AVX-512 or F16C, @d or @n not a multiple of 16, @d above 1024),
 * and nothing is written: then it is channel by channel. */
/* kvcd_dequant_rows into f16 rows (@ts values apart) as kvcd_from_f32 would write its floats;
 * streamed when @nt (then false unless @out is 32-byte aligned and @ts a multiple of 16: the
 * caller fences before publishing). */
bool kvcd_dequant_rows_f16(enum kvcd_isa isa, const uint8_t *q, size_t d, size_t n,
			   const uint16_t *par, uint16_t *out, size_t ts, bool nt);
/* The inverse of kvcd_quant_row_f16, from its layout (@par, @codes, @per, @stride) to a row of
 * @ng * @gch f16 values at @out, as kvcd_dequant_group then kvcd_from_f32 give them; streamed
 * when @nt. false where kvcd_quant_row_f16_ok says no, or @nt with @out not 32-byte aligned:
 * nothing is written. */
bool kvcd_dequant_row_f16(enum kvcd_isa isa, const uint8_t *par, const uint8_t *codes, size_t ng,
			  size_t gch, size_t per, unsigned bits, size_t stride, uint16_t *out,
			  bool nt);
bool kvcd_dequant_rows(enum kvcd_isa isa, const uint8_t *q, size_t d, size_t n, const uint16_t *par,
		       float *out, size_t ts);

/* Pack @n codes of @bits each (one per byte in @q) into @out: ceil(n * bits / 8) bytes. */
void kvcd_pack(const uint8_t *q, size_t n, unsigned bits, uint8_t *out);
void kvcd_unpack(const uint8_t *in, size_t n, unsigned bits, uint8_t *q);
static inline size_t kvcd_packed_bytes(size_t n, unsigned bits)
{
	return (n * bits + 7) / 8;
}

#endif /* KVCD_QUANT_H */
