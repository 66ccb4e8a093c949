"""The one read pipeline: storages and array references, the native reader, materialisation
to NumPy or torch, and the lazy file ``satchel.open`` returns for every format."""
