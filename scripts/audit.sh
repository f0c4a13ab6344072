#!/usr/bin/env bash
# Audits the locked Python dependencies (uv.lock, every group) for known vulnerabilities with
# pip-audit. Needs network access to the vulnerability database: PyPI's JSON API (default) or
# OSV (AUDIT_SERVICE=osv). Not part of `make test`, which must pass offline.
#
# Exit status: 0 no known vulnerability; 1 vulnerabilities found (listed); 2 the vulnerability
# service could not be reached or answered for no package (nothing was audited).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICE="${AUDIT_SERVICE:-pypi}"
WORK=$(mktemp -d /tmp/portal-audit.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

UV_PYTHON_DOWNLOADS=never .tools/bin/uv export --frozen --no-hashes --all-groups --quiet \
    >"$WORK/requirements.txt"
echo "==> pip-audit: $(grep -c '==' "$WORK/requirements.txt") locked packages against $SERVICE"

set +e
.venv/bin/pip-audit -r "$WORK/requirements.txt" --no-deps --disable-pip \
    --vulnerability-service "$SERVICE" --progress-spinner off --desc off \
    --format json --output "$WORK/report.json" 2>"$WORK/stderr"
status=$?
set -e

.venv/bin/python - "$WORK/report.json" "$WORK/stderr" "$status" "$SERVICE" <<'EOF'
import json
import sys
from pathlib import Path

report_path, stderr_path, status, service = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
stderr = Path(stderr_path).read_text()
unreachable = (
    f"error: the vulnerability service ({service}) could not be reached or answered for no "
    "package, so nothing was audited. This needs network access to "
    + ("pypi.org (or AUDIT_SERVICE=osv)" if service == "pypi" else "api.osv.dev")
    + "."
)
try:
    report = json.loads(Path(report_path).read_text())
except (OSError, ValueError):
    last = stderr.strip().splitlines()[-1:] or ["(no output)"]
    print(f"  pip-audit: {last[0][:400]}", file=sys.stderr)
    if any(s in stderr for s in ("NameResolutionError", "ConnectionError", "Max retries")):
        print(unreachable, file=sys.stderr)
        sys.exit(2)
    print(f"error: pip-audit failed (exit {status}) without a report", file=sys.stderr)
    sys.exit(2)

dependencies = report.get("dependencies", [])
audited = [d for d in dependencies if "skip_reason" not in d]
skipped = [d for d in dependencies if "skip_reason" in d]
vulnerable = [d for d in audited if d.get("vulns")]
if dependencies and not audited:
    print(f"  first reason: {skipped[0]['skip_reason']}", file=sys.stderr)
    print(unreachable, file=sys.stderr)
    sys.exit(2)
for dep in skipped:
    print(f"  not audited: {dep['name']} ({dep['skip_reason']})")
for dep in vulnerable:
    for vuln in dep["vulns"]:
        fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
        aliases = ", ".join(vuln.get("aliases", []))
        print(f"  {dep['name']} {dep['version']}: {vuln['id']} ({aliases}) fixed in {fixed}")
count = sum(len(d["vulns"]) for d in vulnerable)
print(f"==> {len(audited)} packages audited, {len(skipped)} not audited, {count} known vulnerabilities")
sys.exit(1 if vulnerable else 0)
EOF
