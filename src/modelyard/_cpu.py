"""What the CPU's int8 kernels can do: whether 8-bit weights risk int16 overflow.

On x86 without VNNI (AVX2, AVX-512 without ``avx512_vnni``), ONNX Runtime's U8S8 integer
kernels multiply unsigned 8-bit activations by signed 8-bit weights with ``vpmaddubsw``,
which adds two neighbouring products into a *saturating* int16: ``255 * 127 * 2 = 64,770``
does not fit in 32,767, so large activations meeting large weights are clipped and the
int8 model's outputs drift (measured here: probabilities off by 0.05 to 0.07 on a small
MLP whose torch fake-quantized twin is exact). VNNI (``vpdpbusd``) sums into int32 and
does not overflow. ONNX Runtime's own advice is 7-bit weights (``reduce_range``) on such
CPUs: ``255 * 63 * 2 = 32,130`` fits. ARM's ``sdot``/``udot`` sum into int32 too.
"""

from __future__ import annotations

import functools
import json
import platform
import warnings
from pathlib import Path

__all__ = ["int8_weights_overflow", "saturation_warning", "seven_bit_weights", "warn_if_saturates", "weight_qmax"]

#: /proc/cpuinfo flags of x86 instructions that sum u8*s8 products into int32 without saturation.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def int8_weights_overflow(cpuinfo: str | None = None) -> bool:
    """True when this CPU's U8S8 int8 kernels can saturate, so weights should use 7 bits.

    Parameters
    ----------
    cpuinfo : str or None, default=None
        Contents of ``/proc/cpuinfo`` (read if None). Non-x86 machines never overflow; an
        x86 machine whose flags cannot be read is assumed to overflow (7-bit weights cost
        a little precision, saturation costs correctness).
    """
    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return not (_VNNI_FLAGS & set(line.partition(":")[2].split()))
    return True


def seven_bit_weights(reduce_range: bool | None) -> bool:
    """``reduce_range`` as given, or for this CPU when None (:func:`int8_weights_overflow`)."""
    return int8_weights_overflow() if reduce_range is None else bool(reduce_range)


def weight_qmax(reduce_range: bool | None) -> int:
    """The largest magnitude of a symmetric int8 weight: 63 with ``reduce_range`` (7 bits), else 127.

    ``reduce_range=None`` chooses for this CPU.
    """
    return 63 if seven_bit_weights(reduce_range) else 127


def saturation_warning(record: str | None, where: str) -> str | None:
    """A warning for an int8 model with 8-bit weights about to run on a CPU where they saturate.

    Parameters
    ----------
    record : str or None
        The model's ``modelyard.quantization`` metadata (JSON), None if it has none.
    where : str
        The model's name for the message.

    Returns
    -------
    str or None
        The message, or None when the model is float, uses 7-bit weights, or this CPU
        sums int8 products without saturation.
    """
    if not record:
        return None
    try:
        info = json.loads(record)
    except ValueError:
        return None
    mode = info.get("mode")
    if mode in ("static", "dynamic"):
        eight_bit = info.get("weight_type") == "int8" and not info.get("reduce_range")
    elif mode == "qat":
        eight_bit = 8 in info.get("weight_bits", [8])  # written before 7-bit QAT existed: 8 bits
    else:
        return None
    if not eight_bit or not int8_weights_overflow():
        return None
    return (
        f"{where} has 8-bit int8 weights, and this CPU (x86 without VNNI) runs them in kernels whose int16 "
        "sums saturate, so its outputs can differ from the model that was measured. Re-quantize it on this "
        "machine (modelyard compress, or quantize() with the default reduce_range=None) for 7-bit weights."
    )


def warn_if_saturates(record: str | None, where: str) -> None:
    """Warn (RuntimeWarning, at the caller's caller) when :func:`saturation_warning` has a message."""
    message = saturation_warning(record, where)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
