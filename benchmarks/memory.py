"""Memory and timing helpers shared by the benchmarks (CPU: /proc/self/status; CUDA: the allocator's counters)."""

from __future__ import annotations


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer or counter sees it."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def current_memory(device: str, reset: bool = False) -> int:
    """Bytes in use now (CUDA: allocated tensors, optionally resetting the peak counter; CPU: resident set)."""
    if device.startswith("cuda"):
        import torch

        if reset:
            torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _proc_status("VmRSS")


def peak_memory(device: str) -> int:
    """High-water mark in bytes (CUDA: since the last reset; CPU: of the process)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated()
    return _proc_status("VmHWM")


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")
