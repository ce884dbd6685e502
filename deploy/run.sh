#!/usr/bin/env bash
# The run command: installs what is missing, starts PostgreSQL, Redis and Orthanc, loads the demo
# studies into Orthanc, syncs them into the platform, and runs web + Celery workers + beat until
# Ctrl-C, then stops what it started. Safe to run again: nothing is loaded or created twice.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
system_ensure
secrets_load
cd "$REPO"
export DJANGO_SETTINGS_MODULE=annotator.settings.local
PORT="${PORT:-8000}"
manage() { "$PY" manage.py "$@"; }
mkdir -p "$VAR/log"

PIDS=()
STOPPING=""
stop_all() {
  STOPPING=1
  trap - INT TERM EXIT
  if [ ${#PIDS[@]} -gt 0 ]; then
    say "Stopping"
    kill -TERM "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
  fi
}
trap stop_all INT TERM EXIT

"$PY" deploy/db_ensure.py
manage migrate --noinput -v0
manage collectstatic --noinput -v0
manage demo_users

if ! curl -fs -o /dev/null -u "annotator:$ORTHANC_PASSWORD" "http://127.0.0.1:${ORTHANC_HTTP_PORT:-8042}/system"; then
  say "Starting Orthanc on 127.0.0.1:${ORTHANC_HTTP_PORT:-8042} (storage var/orthanc)"
  # Not through manage(): a backgrounded function is a subshell, and $! would not be Orthanc.
  "$PY" manage.py orthanc_serve > "$VAR/log/orthanc.log" 2>&1 &
  PIDS+=($!)
fi
manage demo_load
manage pacs_sync
manage demo_project

say "Starting web, Celery workers and beat (logs in var/log/)"
cd "$REPO/platform"
"$VENV/bin/gunicorn" annotator.wsgi:application --bind "127.0.0.1:$PORT" --workers 3 --timeout 120 \
  > "$VAR/log/web.log" 2>&1 &
PIDS+=($!)
"$VENV/bin/celery" -A annotator worker -Q interactive -c 1 -n interactive@%h -l INFO > "$VAR/log/worker-interactive.log" 2>&1 &
PIDS+=($!)
# Batch work gets half the cores, so a click on the interactive queue stays fast while a round trains;
# train runs one round at a time (one GPU, or the CPU).
BATCH_THREADS=$(( $(nproc) > 2 ? $(nproc) / 2 : 1 ))
# PACS sync, ingest, export and the learning tick never wait behind minutes of model work.
"$VENV/bin/celery" -A annotator worker -Q cpu -c 2 -n cpu@%h -l INFO > "$VAR/log/worker-cpu.log" 2>&1 &
PIDS+=($!)
OMP_NUM_THREADS=$BATCH_THREADS "$VENV/bin/celery" -A annotator worker -Q gpu -c 1 -n gpu@%h -l INFO \
  > "$VAR/log/worker-gpu.log" 2>&1 &
PIDS+=($!)
OMP_NUM_THREADS=$BATCH_THREADS "$VENV/bin/celery" -A annotator worker -Q train -c 1 -n train@%h -l INFO \
  > "$VAR/log/worker-train.log" 2>&1 &
PIDS+=($!)
"$VENV/bin/celery" -A annotator beat -s "$VAR/celerybeat-schedule" -l INFO > "$VAR/log/beat.log" 2>&1 &
PIDS+=($!)
cd "$REPO"

for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/accounts/login/" && break; sleep 0.2; done
say "Annotator is running at http://127.0.0.1:$PORT/  (Ctrl-C stops it; logs in var/log/)"
echo "Demo users: admin, reviewer, annotator; their passwords were printed when they were created."
wait -n "${PIDS[@]}" || true
if [ -z "$STOPPING" ]; then
  echo "A component stopped by itself; see var/log/. Stopping the rest." >&2
  exit 1
fi
