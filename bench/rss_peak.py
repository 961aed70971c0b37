"""Peak resident-set-size measurement for the CPU benchmarks (Linux ``/proc``).

``reset_peak_rss`` sets the kernel's peak RSS (VmHWM) to the current RSS and
returns that level; after the measured work, ``peak_rss_kib() - level`` is the
peak RSS increase. ``trim_heap`` first returns freed memory to the OS, so the
level does not include memory freed earlier.
"""
import ctypes
import gc

__all__ = ["status_kib", "trim_heap", "reset_peak_rss", "peak_rss_kib"]


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (e.g. VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def trim_heap() -> None:
    """Collect garbage and hand glibc's free heap pages back to the OS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS; return the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")


def peak_rss_kib() -> int:
    """Peak RSS (VmHWM) in KiB since the last ``reset_peak_rss``."""
    return status_kib("VmHWM")
