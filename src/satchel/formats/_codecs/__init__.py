"""Container codecs the foreign readers share: bytes in, checked values out, no format policy.

``pickle`` (with ``pickle_machine``, ``pickle_opcodes`` and the NumPy stand-ins of
``pickle_ndarray``) interprets pickles through an allowlist; ``zip`` indexes archives;
``inflate`` bounds every decompression (deflate, zstd); ``protobuf``, ``sstable`` and
``crc32c`` decode TensorFlow's containers; ``ocdbt`` and ``zarr`` decode tensorstore's;
``source`` maps a file read-only. Nothing here imports a reader.
"""
