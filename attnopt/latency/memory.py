"""Whether every backend can be alive at once (what interleaved timing needs), from what each is expected
to hold against what the machine has free."""

from __future__ import annotations

from pathlib import Path

#: an ONNX Runtime session or engine holds its weights plus prepacked copies and arena: about twice the file
SESSION_FACTOR = 2.0
#: leave this much of the free memory alone
HEADROOM = 0.8


def artifact_bytes(path: Path) -> int:
    """The model file plus external data files next to it (model.onnx.data and the like)."""
    path = Path(path)
    total = path.stat().st_size if path.is_file() else 0
    for extra in path.parent.glob(path.name + ".*"):
        if extra.suffix in (".data", ".bin", ".weights"):
            total += extra.stat().st_size
    return total


def module_bytes(module: object) -> int:
    tensors = list(getattr(module, "parameters", lambda: [])()) + list(getattr(module, "buffers", lambda: [])())
    return sum(t.numel() * t.element_size() for t in tensors)


def free_bytes(device: str) -> int | None:
    """Memory free for new allocations on `device`, or None when it cannot be read."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fit_together(needs: dict[str, int]) -> str:
    """Empty when the backends' needs (bytes, keyed by device) fit in free memory at once, else why not."""
    for device, need in needs.items():
        free = free_bytes(device)
        if free is not None and need > HEADROOM * free:
            return (f"the backends need about {need / 2**30:.1f} GiB of {device} memory together and "
                    f"{free / 2**30:.1f} GiB is free")
    return ""
