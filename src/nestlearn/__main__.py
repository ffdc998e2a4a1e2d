"""``python -m nestlearn``: the ``nestlearn`` command."""

from nestlearn.cli import main

raise SystemExit(main())
