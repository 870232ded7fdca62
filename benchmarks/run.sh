#!/usr/bin/env bash
# The one benchmark command (issue 9):   bash benchmarks/run.sh [--quick] [bench.py options]
#
# Builds benchmarks/.bench-env (its own venv: the repo installed editable + requirements.txt),
# installs wrk from Debian if it is missing, then runs benchmarks/bench.py, which writes
# benchmarks/results/latest.{json,md,png} (quick.{json,md,png} with --quick).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
env_dir="$here/.bench-env"
python="${BENCH_PYTHON:-python3}"

if ! command -v wrk >/dev/null 2>&1; then
    echo "[run.sh] installing wrk (Debian package)" >&2
    if ! apt-get install -y wrk >/dev/null 2>&1; then
        apt-get update >/dev/null
        apt-get install -y wrk >/dev/null
    fi
fi

# Reinstall only when the inputs changed; the stamp is the hash of what decides the environment.
stamp_want="$(cat "$here/requirements.txt" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
stamp_file="$env_dir/.bench-stamp"
if [[ ! -x "$env_dir/bin/python" ]]; then
    echo "[run.sh] creating $env_dir" >&2
    "$python" -m venv "$env_dir"
fi
if [[ "$(cat "$stamp_file" 2>/dev/null || true)" != "$stamp_want" ]]; then
    echo "[run.sh] installing benchmark dependencies into $env_dir" >&2
    "$env_dir/bin/python" -m pip install --quiet --upgrade pip
    "$env_dir/bin/python" -m pip install --quiet -e "$repo" -r "$here/requirements.txt"
    echo "$stamp_want" >"$stamp_file"
fi

exec "$env_dir/bin/python" "$here/bench.py" "$@"
