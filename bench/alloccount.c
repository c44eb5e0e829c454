// LD_PRELOAD shim for bench/alloc_count.sh: counts heap allocations (malloc, calloc, realloc
// that allocates, aligned forms; operator new goes through malloc) and prints the total at exit
// to $ALLOCCOUNT_OUT.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);

static unsigned long long allocs;

void* malloc(size_t n) {
  ++allocs;
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  ++allocs;
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  if (!p) ++allocs;
  return __libc_realloc(p, n);
}
void* memalign(size_t a, size_t n) {
  ++allocs;
  return __libc_memalign(a, n);
}
int posix_memalign(void** out, size_t a, size_t n) {
  ++allocs;
  *out = __libc_memalign(a, n);
  return *out ? 0 : 12;
}
void* aligned_alloc(size_t a, size_t n) {
  ++allocs;
  return __libc_memalign(a, n);
}

__attribute__((destructor)) static void report(void) {
  const char* path = getenv("ALLOCCOUNT_OUT");
  FILE* f = path ? fopen(path, "w") : NULL;
  if (!f) return;
  fprintf(f, "%llu\n", allocs);
  fclose(f);
}
