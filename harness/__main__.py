"""``python -m harness`` is the same as the ``dabench`` console script (:mod:`dabench.cli`)."""

from dabench.cli import main

raise SystemExit(main())
