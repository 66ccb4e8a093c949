"""Other frameworks' files, read as untrusted bytes without the frameworks installed.

``detect`` names a path's format from its contents; each reader returns what the framework's
own loader returns, with arrays as :class:`~satchel.formats._refs.ArrayRef` (``finalize`` turns
them into NumPy arrays or torch tensors). Nothing from a file is ever imported or called.
"""

from .detect import detect

__all__ = ["detect"]
