"""Distributed checkpoints on torch.distributed: every rank writes its pieces, one commit,
reshard on load (SPEC 10). ``layout`` is pure data; ``ranks`` is the torch rim."""
