"""The CPU allocator setting, in fresh processes (it is process-wide): a large freed buffer is reused without
page faults, and memory a decoding thread frees is reused by the model's thread."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_REUSE = textwrap.dedent(
    """
    import ctypes, resource
    from birdshield.runtime import tune_cpu_allocator
    assert tune_cpu_allocator()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, faults = 1300 * 2**20, []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(faults)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_a_large_freed_buffer_without_page_faults() -> None:
    out = subprocess.run([sys.executable, "-c", _REUSE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, *later = (int(f) for f in out.stdout.strip(" []\n").split(","))
    assert first > 300_000 and all(f < 1_000 for f in later), (first, later)  # 1.3 GB = 333k pages


_SHARED_ARENA = textwrap.dedent(
    """
    import ctypes, resource, threading
    from birdshield.runtime import tune_cpu_allocator
    assert tune_cpu_allocator()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 300 * 2**20

    def use_block():
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)

    worker = threading.Thread(target=use_block)
    worker.start()
    worker.join()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    use_block()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_memory_a_thread_frees_is_reused_by_the_main_thread() -> None:
    out = subprocess.run([sys.executable, "-c", _SHARED_ARENA], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 1_000  # 300 MB = 77k pages: the thread's freed block was reused
