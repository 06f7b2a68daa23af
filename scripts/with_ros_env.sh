#!/usr/bin/env bash
# Run a command with the colcon install/ overlay (if built) sourced on top of the venv.
set -eo pipefail
cd "$(dirname "$0")/.."
if [[ -f install/local_setup.bash ]]; then
    # shellcheck disable=SC1091
    source install/local_setup.bash
fi
exec "$@"
