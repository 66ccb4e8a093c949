"""``python -m satchel``: the same command as ``satchel``."""

from ._cli import main

raise SystemExit(main())
