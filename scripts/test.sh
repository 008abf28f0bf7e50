#!/usr/bin/env bash
# Set everything up and run the tests (the README's test command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
# The MLflow UI test drives Debian's headless Chromium; install it where we may (root, apt).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) \
    || echo "note: could not install chromium; the UI test will be skipped" >&2
fi
# The cluster recipe's test runs a real PostgreSQL (tests/launch/test_secure_cluster.py); install it the same way.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq postgresql >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1)) \
    || echo "note: could not install postgresql; the secure cluster test will be skipped" >&2
fi
python3 -m pytest -q "$@"
