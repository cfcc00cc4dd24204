"""The FP8 formats of the SPEC, as bit-field descriptions (NumPy only)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Fp8Format:
    name: str
    ebits: int
    mbits: int
    bias: int
    max_value: float
    max_code: int  # largest finite magnitude code (sign bit clear)
    nan_code: int  # the canonical NaN this library writes
    inf_code: Optional[int]  # +Inf magnitude code, None when the format has no Inf
    negative_zero: bool  # whether 0x80 is -0 (False for e4m3fnuz, where 0x80 is NaN)


FP8_FORMATS = {
    "e4m3fn": Fp8Format("e4m3fn", 4, 3, 7, 448.0, 0x7E, 0x7F, None, True),
    "e5m2": Fp8Format("e5m2", 5, 2, 15, 57344.0, 0x7B, 0x7F, 0x7C, True),
    "e4m3fnuz": Fp8Format("e4m3fnuz", 4, 3, 8, 240.0, 0x7F, 0x80, None, False),
}


def fp8_format(fmt: str) -> Fp8Format:
    try:
        return FP8_FORMATS[fmt]
    except KeyError:
        raise ValueError(
            f"fmt must be one of {sorted(FP8_FORMATS)}; got {fmt!r}"
        ) from None
