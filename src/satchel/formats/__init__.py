"""Other frameworks' files, read as untrusted bytes without the frameworks installed.

``detect`` names a path's format from its contents; ``registry`` maps each name to its
:class:`~satchel.formats._reader.Reader` (the protocol, with the call order, is in ``_reader``).
A reader returns what the framework's own loader returns, arrays as
:class:`~satchel._read.refs.ArrayRef`; the read pipeline turns them into NumPy arrays or torch
tensors. The container codecs the readers share are in ``_codecs``. Nothing from a file is ever
imported or called.
"""

from .detect import detect

__all__ = ["detect"]
