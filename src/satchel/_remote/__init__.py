"""Object storage: satchel files and sharded folders at fsspec URLs (docs/storage.md, SPEC 11).

``url`` tells a URL from a path and needs nothing optional; every other module here imports
``fsspec`` at its top, so the rest of satchel reaches them only from inside a function, once a
URL was given (``import satchel`` imports neither fsspec nor s3fs).
"""
