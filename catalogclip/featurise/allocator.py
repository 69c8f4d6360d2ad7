"""glibc malloc tuned for tensor-sized allocations, set at run time.

By default glibc serves every allocation over 32 MB (the dynamic mmap threshold's cap) with a
fresh `mmap` and returns it with `munmap` when freed, so each batch's activations cost page
faults and zeroing by the kernel again; on EfficientNet-Lite0 that was half of a bare loop's CPU
time. `MALLOC_MMAP_MAX_` / `MALLOC_TRIM_THRESHOLD_` would fix it but are read once at process
start; `mallopt` does the same for a running process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: freed memory below this stays in the process for the next batch instead of going back to the kernel
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=None)
def tune_allocator() -> bool:
    """Keep large blocks on the heap and freed memory in the process; True where glibc took it.

    Process-wide and idempotent; a no-op (False) on a C library without `mallopt`.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
