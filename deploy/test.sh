#!/usr/bin/env bash
# The test command: installs what is missing, starts PostgreSQL and Redis when they are down, runs
# every test: the browser code's type check and unit tests, then pytest (the tests start their own
# Orthanc; the browser tests drive Debian's Chromium). Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
system_ensure
apt_ensure chromium  # Debian's browser, which the browser tests (tests/test_browser.py) drive headless
cd "$REPO"
"$VENV/bin/ruff" check .
(cd frontend && npm run --silent typecheck && npm test --silent)
exec "$VENV/bin/pytest" "$@"
