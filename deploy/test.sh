#!/usr/bin/env bash
# The test command: installs what is missing, starts PostgreSQL and Redis when they are down, runs
# every test (the tests start their own Orthanc). Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
system_ensure
cd "$REPO"
"$VENV/bin/ruff" check .
exec "$VENV/bin/pytest" "$@"
