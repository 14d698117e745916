/* The few libc routines the kernel (and gcc's struct copies) need: byte loops. */
#include "kern.h"

void *memset(void *d, int c, size_t n)
{
	volatile uint8_t *p = d;	/* volatile: keep gcc from calling memset */

	while (n-- > 0)
		*p++ = (uint8_t)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	volatile uint8_t *p = d;
	const uint8_t *q = s;

	while (n-- > 0)
		*p++ = *q++;
	return d;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n] != '\0')
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a != '\0' && *a == *b) {
		a++;
		b++;
	}
	return (uint8_t)*a - (uint8_t)*b;
}
