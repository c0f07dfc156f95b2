# Sourced by the other scripts: moves to the repository root, exports dev.env,
# puts cargo-installed tools on PATH and resolves the sluice binary.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
set -a
# shellcheck source=/dev/null
. "$ROOT/dev.env"
set +a
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
case $SLUICE_BIN in /*) ;; *) SLUICE_BIN=$ROOT/$SLUICE_BIN ;; esac
