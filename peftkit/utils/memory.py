"""Process memory readings that stay honest when the process was started by a large parent.

``ru_maxrss`` is inherited across fork + exec on Linux, so a worker started by a big benchmark
process reports the parent's peak. The kernel's per-address-space high-water mark (``VmHWM`` in
``/proc/self/status``) starts fresh at exec and can be reset (``/proc/self/clear_refs``), so it
measures the peak of exactly the code that ran since.
"""

from __future__ import annotations

import resource
from pathlib import Path

STATUS = Path("/proc/self/status")

# For measuring subprocesses: glibc raises its mmap threshold to the largest block freed so far, after which
# freed activation buffers stay in the heap and RSS measures the allocator's history rather than live
# memory; a fixed threshold returns every large tensor to the OS when freed. Use the same for every setup.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_mib(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """Resident memory now."""
    value = _status_mib("VmRSS")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mib() -> float:
    """Peak resident memory of this process (since start or the last ``reset_peak_rss``)."""
    value = _status_mib("VmHWM")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Start a new peak measurement from the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class SavedForBackward:
    """Bytes of the distinct storages autograd saves for backward while the block runs.

    ``skip`` holds tensors not to count (e.g. the model's parameters, to count activations only); tensor
    subclasses that wrap others (4-bit NF4 weights), which have no plain storage, are never counted.

        with SavedForBackward(skip=model.parameters()) as saved:
            loss = model(**batch).loss
        saved.bytes
    """

    def __init__(self, skip=()) -> None:
        self._skip = {t.untyped_storage().data_ptr() for t in skip if not self._is_wrapper(t)}
        self._seen: dict[int, int] = {}
        self._hooks = None

    @staticmethod
    def _is_wrapper(tensor) -> bool:
        """A tensor subclass that wraps others and has no plain storage of its own (torchao's NF4 weights)."""
        return hasattr(type(tensor), "__tensor_flatten__")

    def _pack(self, tensor):
        if not self._is_wrapper(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self._skip:
                self._seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedForBackward:
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())
