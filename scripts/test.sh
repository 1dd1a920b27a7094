#!/usr/bin/env bash
# The README's test command: set up the environment, lint, then the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
py="$root/.venv/bin/python"
echo "== ruff check"; "$py" -m ruff check .
echo "== ruff format --check"; "$py" -m ruff format --check .
echo "== pytest"; exec "$py" -m pytest "$@"
