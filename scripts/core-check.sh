#!/usr/bin/env bash
# The core is a library other programs build on: it depends on none of the front ends' crates
# (command line, progress bars, signals, HTTP), prints nothing, installs no signal handler, and
# documents its whole public API.
set -euo pipefail
cd "$(dirname "$0")/.."
front_ends='clap|indicatif|ctrlc|tokio|axum|reqwest'
if cargo tree -p charrnn-core -e normal --prefix none --format '{p}' | grep -E "^($front_ends) "; then
    echo "core-check: charrnn-core depends on a front end's crate (above)" >&2
    exit 1
fi
if grep -rnE 'eprintln!|println!|set_handler' crates/charrnn-core/src; then
    echo "core-check: charrnn-core prints or handles signals (above); report through its return values and events" >&2
    exit 1
fi
RUSTDOCFLAGS="-D warnings" cargo doc --release -p charrnn-core --no-deps --quiet
