#!/usr/bin/env bash
# The test command: install (first run only), lint (ruff, yamllint, shellcheck through pre-commit), then the
# unit, integration and e2e tiers (the 25 slowest tests listed at the end). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/pre-commit run --all-files --show-diff-on-failure
exec .venv/bin/python -m pytest -ra --durations=25 "$@"
