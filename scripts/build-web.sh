#!/usr/bin/env bash
# Builds the browser's sampler (web/, the core for wasm32-unknown-unknown) into
# target/web/charrnn.wasm, which `cargo build` then embeds for `charrnn export --web`.
# rustup cannot add targets on these machines, so the wasm32 standard library is built from
# Debian's rustc-web and its source (-Zbuild-std), linked by rustup's rust-lld; the packages
# are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x /usr/bin/rustc ]] || ! /usr/bin/rustc --print target-list | grep -qx wasm32-unknown-unknown \
    || [[ ! -d /usr/lib/rustlib/src/rust/library ]]; then
    echo "build-web: installing rustc-web cargo-web rust-web-src" >&2
    apt-get update -qq && apt-get install -y -qq rustc-web cargo-web rust-web-src >/dev/null
fi
lld="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld"
export RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$lld"
# The random-number crates' system source is the browser's (see web/Cargo.toml); the module
# never asks for it, a sample's seed being given.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS='--cfg getrandom_backend="wasm_js" -C target-feature=+simd128'
# The release profile keeps line tables for profiling the binary; the module needs none.
export CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=true
/usr/bin/cargo build --release --quiet --target wasm32-unknown-unknown \
    -Zbuild-std=core,alloc,std,panic_abort -p charrnn-web --target-dir target/wasm
mkdir -p target/web
cp target/wasm/wasm32-unknown-unknown/release/charrnn_web.wasm target/web/charrnn.wasm
echo "build-web: target/web/charrnn.wasm ($(du -k target/web/charrnn.wasm | cut -f1) KiB)" >&2
