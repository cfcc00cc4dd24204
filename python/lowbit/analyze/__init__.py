"""Building blocks of ``lowbit analyze``: the text it embeds (``data``) and how it scores a
quantized embedding model against the full-precision one (``metrics``)."""
