"""Which CPU runs this process, as far as onnxruntime's integer kernels care (standard library only).

The class decides how u8·s8 products are added: ``amx``, ``avx512-vnni`` and ``avx-vnni`` in 32 bits (exact);
``avx512`` and ``avx2`` in saturating 16-bit pairs (see quantization/saturation.py). onnxforge's int8 artifacts keep
their integers within what the saturating kernels add exactly, so every class gives the same results; the manifest
records the class a gate was measured on, and ``onnxforge verify`` measures again on the machine at hand.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flags that choose onnxruntime's integer kernels, in the order they are reported
KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
# First match wins: (class, flags it needs)
CLASSES = (("amx", {"amx_int8"}), ("avx512-vnni", {"avx512_vnni"}), ("avx-vnni", {"avx_vnni"}),
           ("avx512", {"avx512bw"}), ("avx2", {"avx2"}))  # fmt: skip
SATURATING = {"avx512", "avx2"}


@dataclass(frozen=True)
class Cpu:
    """A CPU's model name and the kernel-deciding flags it has."""

    model: str
    flags: tuple[str, ...]
    machine: str = "x86_64"

    @property
    def kernel_class(self) -> str:
        """``amx``, ``avx512-vnni``, ``avx-vnni``, ``avx512``, ``avx2``, or the architecture's name elsewhere."""
        have = set(self.flags)
        return next((name for name, needs in CLASSES if needs <= have), self.machine)

    @property
    def saturates(self) -> bool:
        """Whether u8·s8 pair sums saturate at 16 bits on this CPU (x86 without VNNI or AMX)."""
        return self.kernel_class in SATURATING

    def record(self) -> dict[str, object]:
        """The manifest's ``measured_on``."""
        return {"cpu": self.model, "class": self.kernel_class, "flags": list(self.flags)}


def parse_cpuinfo(text: str, machine: str = "x86_64") -> Cpu:
    """A :class:`Cpu` from the text of ``/proc/cpuinfo`` (its first processor)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    have = set(fields.get("flags", "").split())
    model = fields.get("model name") or fields.get("Hardware") or platform.processor() or machine
    return Cpu(model=model, flags=tuple(f for f in KERNEL_FLAGS if f in have), machine=machine)


@functools.cache
def this_cpu() -> Cpu:
    """The CPU this process runs on (flags from ``/proc/cpuinfo``; none where it does not exist)."""
    machine = platform.machine().lower() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, machine)
