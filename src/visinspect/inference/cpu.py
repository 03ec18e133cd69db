"""The CPU this process runs on, and the int8 kernels that are exact on it.

ONNX Runtime's fast int8 kernels multiply uint8 activations by int8 weights. With VNNI (AVX-512
VNNI, AVX-VNNI) or AMX the products are summed in 32 bits, exactly; without them, AVX2 sums pairs
in 16 bits with saturation (VPMADDUBSW), and measured here top-1 agreement with fp32 fell from 89%
to 54%. So the kernels are chosen per CPU: the fast ones where they are exact, ONNX Runtime's
exact (and slower) ones elsewhere. Both give bit-identical logits where the fast ones are exact
(measured: max |difference| 0.0 on 237 photographs), so an int8 graph's agreement, measured once
at build, holds on every CPU; only its speed depends on the CPU, and is measured on it.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# The extensions that decide which precision is fastest (docs/model.md).
SPEED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
)
_EXACT_U8S8 = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


class Int8Kernels(StrEnum):
    """Which of ONNX Runtime's int8 kernels a session uses."""

    U8S8 = "u8s8"  # the fast path; exact only with VNNI or AMX
    EXACT = "exact"  # session.x64quantprecision=1: exact on every x86 CPU, slower


@dataclass(frozen=True, slots=True)
class Cpu:
    model: str
    flags: tuple[str, ...]  # the SPEED_FLAGS this CPU has, in SPEED_FLAGS' order

    @property
    def int8_kernels(self) -> Int8Kernels:
        return Int8Kernels.U8S8 if _EXACT_U8S8 & set(self.flags) else Int8Kernels.EXACT

    def describe(self) -> str:
        return f"{self.model} ({', '.join(self.flags) or 'no AVX2'})"


@functools.cache
def this_cpu() -> Cpu:
    """The CPU from /proc/cpuinfo (elsewhere: the machine name, no flags)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return Cpu(platform.machine(), ())
    return parse_cpuinfo(info)


def parse_cpuinfo(info: str) -> Cpu:
    fields: dict[str, str] = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    return Cpu(
        fields.get("model name") or platform.machine(),
        tuple(f for f in SPEED_FLAGS if f in flags),
    )
