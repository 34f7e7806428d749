#!/usr/bin/env bash
# Make (or refresh) the project's virtual environment in .venv. Idempotent: a second
# run with unchanged requirements returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
CRYPTEN_VERSION=0.4.1
stamp="$VENV/.securemark-installed"
wanted=$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  exit 0
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup: Python 3.10 or newer is needed (found $("$PYTHON" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
# CrypTen 0.4.1's metadata requires the retired `sklearn` package, so it is installed
# without its declared dependencies; the real ones are pinned in requirements.txt.
"$VENV/bin/python" -m pip install --quiet --no-deps "crypten==$CRYPTEN_VERSION"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c 'import securemark_mpc.mpc.crypten_shim as s; s.load_crypten()'
echo "$wanted" > "$stamp"
echo "setup: environment ready in $VENV" >&2
