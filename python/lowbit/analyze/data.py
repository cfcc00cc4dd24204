"""Real English sentences that ship with Python: the prose of the language reference and
library topics in ``pydoc_data.topics`` (what ``help()`` shows), split into sentences. Only
prose is kept: sentences of 40-240 characters that start with a capital, end with . ! or ?,
hold no code punctuation ({}=<>|\\*^~, ">>>", "---") and are at least 85% letters and
spaces; duplicates go, the order is the source's. About 1,100 sentences on Python 3.11;
versions differ a little, and ``sentences(n)`` says so when fewer than ``n`` are found."""
from __future__ import annotations

import re
from typing import List

_CODE = set("{}=<>|\\*^~")


def _prose(s: str) -> bool:
    if not (40 <= len(s) <= 240 and s[0].isupper() and s[-1] in ".!?"):
        return False
    if any(c in _CODE for c in s) or ">>>" in s or "---" in s:
        return False
    return sum(c.isalpha() or c == " " for c in s) / len(s) > 0.85


def sentences(n: int = 1000) -> List[str]:
    """The first ``n`` prose sentences of ``pydoc_data.topics`` (ValueError if fewer)."""
    from pydoc_data.topics import topics

    text = re.sub(r"\s+", " ", " ".join(topics[k] for k in sorted(topics)))
    seen, out = set(), []
    for s in re.split(r"(?<=[.!?])\s+", text):
        if _prose(s) and s not in seen:
            seen.add(s)
            out.append(s)
    if len(out) < n:
        raise ValueError(f"sentences: this Python's pydoc_data.topics holds {len(out)} prose "
                         f"sentences; {n} were asked for")
    return out[:n]
