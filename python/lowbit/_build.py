"""What the compiled module lowbit._C was built with, and what the CUDA runtime sees."""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional

try:
    from . import _C
except ImportError as e:  # running from a source tree without a build
    _C = None
    _IMPORT_ERROR: Optional[str] = str(e)
else:
    _IMPORT_ERROR = None


def build_info() -> Dict[str, Any]:
    if _C is None:
        return {"compiled": False, "cuda": False, "cuda_archs": "", "cuda_archs_source": "",
                "cuda_version": "", "error": _IMPORT_ERROR}
    info = dict(_C.build_info())
    info["compiled"] = True
    return info


@functools.lru_cache(maxsize=None)
def has_cuda_kernels() -> bool:
    return _C is not None and bool(_C.build_info()["cuda"])
