"""``python -m ml_worker``: see `ml_worker.cli`."""

from ml_worker.cli import main

raise SystemExit(main())
