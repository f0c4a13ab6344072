#!/usr/bin/env bash
# Migrates, loads the demo data and runs web, worker and beat together (Ctrl-C stops all three).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-1}" PORT="${PORT:-8000}"
export SITE_URL="${SITE_URL:-http://127.0.0.1:${PORT}}"
mkdir -p "${PORTAL_VAR_DIR:-var}"
.venv/bin/python manage.py migrate --noinput
demo=$(.venv/bin/python manage.py load_demo_data)
echo
echo "  GPU Cloud portal: http://127.0.0.1:${PORT}/"
echo "  ${demo}"
echo "  API docs: http://127.0.0.1:${PORT}/api/docs/   (Ctrl-C stops web, worker and beat)"
echo
exec .venv/bin/honcho start -f Procfile
