"""``python -m nestlearn.cli`` (and ``torchrun -m nestlearn.cli``): the ``nestlearn`` command."""

from nestlearn.cli import main

raise SystemExit(main())
