"""Environment switches read on the hot path of every op call.

``os.environ.get`` of an unset variable costs about 1 us (``os.environ`` raises and catches
a KeyError inside), and an eager GPU call reads several switches. ``getenv`` returns what
``os.environ.get`` would, from the dict that ``os.environ`` keeps in step with its own
updates (``os.environ[...] = v``, ``del``, pytest's ``monkeypatch.setenv``), without the
exception. A variable changed behind ``os.environ``'s back (``os.putenv``) is not seen by
either.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

_data = getattr(os.environ, "_data", None)
_keys: Dict[str, bytes] = {}

if os.name == "posix" and isinstance(_data, dict):

    def getenv(name: str) -> Optional[str]:
        key = _keys.get(name)
        if key is None:
            key = _keys[name] = os.fsencode(name)
        value = _data.get(key)
        return None if value is None else os.fsdecode(value)

else:  # Windows keeps upper-cased str keys: no shortcut

    def getenv(name: str) -> Optional[str]:
        return os.environ.get(name)
