"""File-system edges: atomic writes and validated, mapped reads. All I/O satchel does is here."""
