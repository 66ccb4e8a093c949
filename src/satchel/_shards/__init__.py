"""Sharded checkpoints in the Hugging Face layout: shard names, the index, the atomic writer.

Reading goes through ``formats.sharded`` and the one read pipeline; this package writes.
"""
