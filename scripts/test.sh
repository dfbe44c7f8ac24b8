#!/usr/bin/env bash
# The test command: install (first run only), lint, then the unit, integration and e2e tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -ra "$@"
