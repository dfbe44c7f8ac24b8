#!/usr/bin/env bash
# The main job: install (first run only), then deploy the default fleet locally and serve HTTP on 127.0.0.1:8000.
# Extra arguments go to `slmfleet up` (e.g. --spec my-fleet.yaml, --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/slmfleet up "$@"
