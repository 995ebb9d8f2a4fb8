#!/usr/bin/env bash
# Builds the core library for aarch64 (the NEON kernels included) and runs its kernel tests
# there under qemu-user: its unit tests (every product kernel against a naive product) and the
# fused-layer, finite-difference and sampler tests once per aarch64 kernel (neon, portable).
# Only the core: the kernels live there, and the command line's crates (the HTTP stack, TLS)
# add a third to the cross build (on 2 cores 4 min 12 s for the core alone, 5–6 min with them)
# for no kernel code.
#
# On Debian (this project's machines) it uses Debian's packages, installing what is missing:
# rustc-web, whose arm64 standard library comes as a multiarch package, the aarch64 cross gcc
# (ring's C code and the linker) and qemu-user. On a GitHub runner the workflow adds rustup's
# aarch64 target instead, and this script only type-checks (no emulator set up there).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc

if [[ "${GITHUB_ACTIONS:-}" == true ]]; then
    cargo check --release --all-targets --target "$target" --target-dir target/aarch64
    exit 0
fi

need=()
[[ -x /usr/bin/rustc && -d /usr/lib/rustlib/$target ]] || need+=(rustc-web libstd-rust-web-dev:arm64)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
    echo "aarch64-check: installing ${need[*]}" >&2
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    # Other configured sources may lack arm64 lists; Debian's own are what is needed.
    apt-get update -qq || echo "aarch64-check: apt-get update reported errors; trying the install" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's rustc is the one with an aarch64 standard library; it reads the same Cargo.lock.
export RUSTC=/usr/bin/rustc
build=(cargo test --profile cross --target "$target" --target-dir target/aarch64 -p charrnn-core --lib --test rnn)
"${build[@]}" --no-run
# Each test binary's path, from cargo's JSON messages.
mapfile -t binaries < <("${build[@]}" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
((${#binaries[@]} == 2)) || { echo "aarch64-check: expected 2 test binaries, found ${#binaries[@]}" >&2; exit 1; }
for bin in "${binaries[@]}"; do
    case "$bin" in
        # The library's unit tests check every kernel this CPU has in one run.
        */charrnn_core-*) qemu-aarch64 "$bin" ;;
        *) for kernel in neon portable; do
               echo "aarch64 tests with CHARRNN_KERNEL=$kernel" >&2
               CHARRNN_KERNEL=$kernel qemu-aarch64 "$bin"
           done ;;
    esac
done
