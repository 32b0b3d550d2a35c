"""``python -m edgepilot`` is the same as the ``edgepilot`` console script."""

from edgepilot.cli import main

raise SystemExit(main())
