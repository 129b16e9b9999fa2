/* fatbin.c - the codec kernels' fatbin (codec.cu built by nvcc), embedded in the binary when
 * the Makefile found nvcc and names the file in KVCG_FATBIN; empty otherwise. */
#include <stddef.h>

#include "rt.h"

#ifdef KVCG_FATBIN
__asm__(".section .rodata\n"
	".balign 64\n"
	".globl kvcg_fatbin\n"
	"kvcg_fatbin:\n"
	".incbin \"" KVCG_FATBIN "\"\n"
	"kvcg_fatbin_end:\n"
	".previous\n");
extern const unsigned char kvcg_fatbin_end[];

size_t kvcg_fatbin_size(void)
{
	return (size_t)(kvcg_fatbin_end - kvcg_fatbin);
}
#else
const unsigned char kvcg_fatbin[1];

size_t kvcg_fatbin_size(void)
{
	return 0;
}
#endif
