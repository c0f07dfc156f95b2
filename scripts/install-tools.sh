#!/usr/bin/env bash
# Installs what the two README commands need when it is missing:
#   wasm-target  the wasm32-wasip2 target of the project's toolchain (rustup
#                does not add a rust-toolchain.toml target to a toolchain
#                that is already installed)
#   nisshi       Kafka-compatible broker (needs Rust >= 1.96, newer than the
#                project's pinned toolchain), into ~/.cargo/bin
#   garage       S3-compatible object store (only the S3 tests need it)
# nisshi and garage each take about 11 minutes to build on 2 cores, once per
# machine.
#
#   scripts/install-tools.sh [wasm-target] [nisshi] [garage]   (default: all)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WANT=("$@")
((${#WANT[@]} > 0)) || WANT=(wasm-target nisshi garage)
wants() { [[ " ${WANT[*]} " == *" $1 "* ]]; }

NEWER_TOOLCHAIN=1.96.0
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
# Build outside the work tree so the project's rust-toolchain.toml does not
# pick the toolchain of a plain `cargo install`.
cd "${TMPDIR:-/tmp}"

log() { printf 'tools: %s\n' "$*" >&2; }

minor_version() { rustc "+$1" -V 2>/dev/null | sed -nE 's/^rustc 1\.([0-9]+)\..*/\1/p'; }

# A toolchain new enough for nisshi: 1.96.0 if installed, else any installed
# toolchain >= 1.96 (e.g. nightly), else install 1.96.0.
newer_toolchain() {
    local t minor
    for t in "$NEWER_TOOLCHAIN" stable nightly; do
        minor=$(minor_version "$t")
        if [[ -n $minor ]] && ((minor >= 96)); then
            printf '%s' "$t"
            return
        fi
    done
    log "installing Rust $NEWER_TOOLCHAIN (for nisshi)"
    rustup toolchain install "$NEWER_TOOLCHAIN" --profile minimal >&2
    printf '%s' "$NEWER_TOOLCHAIN"
}

# The project's toolchain is the one rust-toolchain.toml pins; ask rustup
# from the repository so it resolves the same one.
if wants wasm-target; then
    toolchain=$(cd "$ROOT" && rustup show active-toolchain | cut -d' ' -f1)
    if rustup target list --installed --toolchain "$toolchain" | grep -qx wasm32-wasip2; then
        log "wasm32-wasip2: installed for $toolchain"
    else
        log "installing the wasm32-wasip2 target for $toolchain"
        rustup target add --toolchain "$toolchain" wasm32-wasip2
    fi
fi

if ! wants nisshi; then
    :
elif command -v nisshi >/dev/null; then
    log "nisshi: $(command -v nisshi)"
else
    toolchain=$(newer_toolchain)
    log "installing nisshi with Rust $toolchain (about 10 minutes)"
    cargo "+$toolchain" install nisshi --locked --no-default-features --features dynostore,postgres
fi

if ! wants garage; then
    :
elif command -v garage >/dev/null; then
    log "garage: $(command -v garage)"
else
    log "installing garage (about 8 minutes)"
    if ! cargo install garage --locked; then
        toolchain=$(newer_toolchain)
        log "garage did not build with the default toolchain; retrying with Rust $toolchain"
        cargo "+$toolchain" install garage --locked
    fi
fi
