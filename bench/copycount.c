// LD_PRELOAD shim for bench/copy_count.sh: counts the bytes user space copies in large pieces
// (memcpy/memmove/realloc of at least 64 KiB; realloc counts only when the block moved) and
// prints the totals at exit. Kernel copies (read/write) are not user-space copies.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const size_t kLarge = 64 * 1024;
static size_t copied, copies;

static void count(size_t n) {
  if (n >= kLarge) copied += n, ++copies;
}

void* memcpy(void* d, const void* s, size_t n) {
  count(n);
  char* dd = d;
  const char* ss = s;
  for (size_t i = 0; i < n; ++i) dd[i] = ss[i];  // no libc call: it could be memcpy itself
  return d;
}

void* memmove(void* d, const void* s, size_t n) {
  count(n);
  char* dd = d;
  const char* ss = s;
  if (dd < ss) {
    for (size_t i = 0; i < n; ++i) dd[i] = ss[i];
  } else {
    for (size_t i = n; i > 0; --i) dd[i - 1] = ss[i - 1];
  }
  return d;
}

void* realloc(void* p, size_t n) {
  static void* (*real)(void*, size_t);
  if (!real) real = (void* (*)(void*, size_t))dlsym(RTLD_NEXT, "realloc");
  size_t had = p ? malloc_usable_size(p) : 0;
  void* q = real(p, n);
  if (q && p && q != p) count(had < n ? had : n);
  return q;
}

__attribute__((destructor)) static void report(void) {
  const char* path = getenv("COPYCOUNT_OUT");
  FILE* f = path ? fopen(path, "w") : stderr;
  if (!f) return;
  fprintf(f, "large_copies=%zu large_copied_bytes=%zu\n", copies, copied);
  if (f != stderr) fclose(f);
}
