#!/usr/bin/env bash
# The cluster's tracking server, run on the head node (README "Clusters"): MLflow with its basic-auth app (every
# request needs a user and password; MLflow's own per-experiment permissions), HTTPS (uvicorn's TLS), a PostgreSQL
# store for runs and for users, bound to this machine's cluster address only. Runs in the foreground.
#
# Set before running (nothing is read from the command line, so no secret lands in `ps` or the shell history):
#   AA_TRACKING_DB        postgresql://USER@HOST:PORT/DB  the runs' database (created beforehand, empty or MLflow's);
#                         its password from PGPASSWORD or ~/.pgpass (libpq's own), never in this URI
#   AA_TRACKING_AUTH_DB   the users' database (default: AA_TRACKING_DB's name + _auth); must differ from the runs'
#   AA_TRACKING_ARTIFACTS a folder every node mounts, or s3://... / gs://... (artifacts go through this server)
#   MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD  the server's admin, created at its first start (the same
#                         variables a client sends: the study owner launches with them); ignored once it exists
# Optional:
#   AA_TRACKING_HOST      the address to listen on (default: this machine's first non-loopback address); never a
#                         wildcard: the server answers on the cluster network only
#   AA_TRACKING_PORT      (5000)        AA_TRACKING_WORKERS  uvicorn processes (4)
#   AA_TRACKING_CERT / AA_TRACKING_KEY  the TLS certificate and key (default: a self-signed certificate for
#                         AA_TRACKING_HOST made once in the state folder; give clients its cert.pem)
#   AA_TRACKING_STATE     folder for the generated files, made private (default: ~/.aa-study/tracking-server)
#   AA_TRACKING_AUTH_CACHE_S  seconds a worker trusts a checked user:password (60; 0: check every request). The
#                         check is a deliberately slow password hash, so without the cache each request costs one
#                         (benchmarks/results/store-load.md); a changed or deleted password still works on the
#                         workers that had checked it for up to this long
set -euo pipefail
umask 077

die() { echo "tracking-server: $*" >&2; exit 2; }
[ -n "${AA_TRACKING_DB:-}" ] || die "set AA_TRACKING_DB=postgresql://USER@HOST:PORT/DB (the runs' database)"
case "$AA_TRACKING_DB" in postgresql://*|postgresql+psycopg://*) ;; *) die "AA_TRACKING_DB must be a postgresql:// URI";; esac
case "${AA_TRACKING_DB#*://}" in *:*@*) die "AA_TRACKING_DB carries a password: put it in ~/.pgpass or PGPASSWORD";; esac
[ -n "${AA_TRACKING_ARTIFACTS:-}" ] || die "set AA_TRACKING_ARTIFACTS (a folder every node mounts, or s3://...)"
[ -n "${MLFLOW_TRACKING_USERNAME:-}" ] && [ -n "${MLFLOW_TRACKING_PASSWORD:-}" ] \
  || die "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the server's admin)"
[ "${#MLFLOW_TRACKING_PASSWORD}" -ge 12 ] || die "MLFLOW_TRACKING_PASSWORD: use at least 12 characters"
base=${AA_TRACKING_DB%%\?*}
auth_db=${AA_TRACKING_AUTH_DB:-${base}_auth}
[ "$auth_db" != "$AA_TRACKING_DB" ] || die "AA_TRACKING_AUTH_DB must be another database than AA_TRACKING_DB"
host=${AA_TRACKING_HOST:-$(hostname -I 2>/dev/null | awk '{print $1}')}
[ -n "$host" ] || die "no non-loopback address found: set AA_TRACKING_HOST"
case "$host" in 0.0.0.0|::|'[::]'|'*') die "AA_TRACKING_HOST: listen on the cluster address, not on every interface";; esac
port=${AA_TRACKING_PORT:-5000}
case "$port" in ''|*[!0-9]*) die "AA_TRACKING_PORT must be a port number";; esac
[ "$port" -ge 1024 ] && [ "$port" -le 65535 ] || die "AA_TRACKING_PORT must be in 1024..65535"
python3 -c "import flask_wtf, psycopg" 2>/dev/null || die "missing packages: pip install 'aa-study[cluster]'"

state=${AA_TRACKING_STATE:-$HOME/.aa-study/tracking-server}
mkdir -p "$state" && chmod 700 "$state"
if [ -n "${AA_TRACKING_CERT:-}" ] || [ -n "${AA_TRACKING_KEY:-}" ]; then
  [ -r "${AA_TRACKING_CERT:-}" ] && [ -r "${AA_TRACKING_KEY:-}" ] || die "AA_TRACKING_CERT and AA_TRACKING_KEY: give both, readable"
  cert=$AA_TRACKING_CERT key=$AA_TRACKING_KEY
else
  cert=$state/cert.pem key=$state/key.pem
  if [ ! -s "$cert" ] || ! openssl x509 -in "$cert" -noout -checkip "$host" 2>/dev/null | grep -q "does match"; then
    san="IP:$host"; case "$host" in *[!0-9.]*) san="DNS:$host";; esac
    openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=$host" -addext "subjectAltName=$san" \
      -keyout "$key" -out "$cert" 2>/dev/null || die "openssl could not make a certificate for $host"
    chmod 644 "$cert"  # public: clients trust it
  fi
fi
# CSRF key of MLflow's auth app: one per server, kept across restarts
[ -s "$state/secret" ] || openssl rand -hex 32 > "$state/secret"
cat > "$state/basic_auth.ini" <<EOF
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = $auth_db
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${AA_TRACKING_AUTH_CACHE_S:-60}
EOF
MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$state/secret")
export MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_AUTH_CONFIG_PATH=$state/basic_auth.ini
export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD
echo "tracking-server: https://$host:$port (clients: MLFLOW_TRACKING_SERVER_CERT_PATH=$cert, their" \
     "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)" >&2
exec mlflow server --app-name basic-auth --backend-store-uri "$AA_TRACKING_DB" \
  --artifacts-destination "$AA_TRACKING_ARTIFACTS" --host "$host" --port "$port" \
  --allowed-hosts "$host:$port,$host" --workers "${AA_TRACKING_WORKERS:-4}" \
  --uvicorn-opts "--ssl-certfile $(printf %q "$cert") --ssl-keyfile $(printf %q "$key")"
