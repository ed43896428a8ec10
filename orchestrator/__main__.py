"""``python -m orchestrator`` is the ``edis-fleet`` command."""

from orchestrator.cli import main

raise SystemExit(main())
