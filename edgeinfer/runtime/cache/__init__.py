"""The result cache: repeated inputs answered from memory, disk or Redis, not the model.

:class:`Cache` is the public face (``edgeinfer.Cache``); the modules beside it
are its parts: ``keys`` (what identifies a call), ``values`` (how results are
stored: bytes, never pickle), ``memory``, ``disk`` and ``remote`` (the three
tiers), ``counters`` (stats), ``admin`` (``edgeinfer cache stats|clear``).
Design notes: docs/CACHE.md.
"""

from .core import Cache
from .keys import model_hash

__all__ = ["Cache", "model_hash"]
