"""Resident memory of this process, for reports (Linux /proc; None elsewhere)."""


def _status_kb(field):
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb():
    """Current resident set size in MiB, or None when it cannot be read."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb():
    """Peak resident set size (high-water mark) in MiB since the last reset, or None."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024.0


def reset_peak():
    """Reset the high-water mark to the current RSS so a step's own peak can be read.

    Returns True when the kernel supports it (Linux >= 4.0, ``clear_refs`` value 5).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def system_memory_mb(path="/proc/meminfo"):
    """Memory the system can still give, in MiB: ``{"available": ..., "swap_free": ...}``.

    ``available`` is the kernel's MemAvailable (free plus reclaimable caches); on a
    Jetson it is what the CPU and the GPU share.  Returns None when the file cannot
    be read (not Linux), a missing field as 0.

    Args:
        path: the meminfo file (default ``/proc/meminfo``; tests give a fixture).
    """
    fields = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    fields[key.strip()] = int(parts[0])
    except OSError:
        return None
    if "MemAvailable" not in fields and "MemFree" not in fields:
        return None
    available = fields.get("MemAvailable", fields.get("MemFree", 0))
    return {"available": available // 1024, "swap_free": fields.get("SwapFree", 0) // 1024}
