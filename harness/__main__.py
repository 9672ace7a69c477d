"""``python -m harness`` is the same as the ``dabench`` console script."""

from harness.cli import main

raise SystemExit(main())
