"""``python -m dabench`` is the same as the ``dabench`` console script."""

from dabench.cli import main

raise SystemExit(main())
