"""Bytes <-> dataclasses for satchel's single file; never touches the file system (SPEC 1-5)."""
