//! Embeds the browser's sampler module for `charrnn export --web`, when it has been built
//! (`scripts/build-web.sh` writes target/web/charrnn.wasm); without it the binary is complete
//! but for that one export, which then says how to build the module.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it")).join("charrnn.wasm");
    println!("cargo:rerun-if-env-changed=CHARRNN_WEB_MODULE");
    let module = match std::env::var_os("CHARRNN_WEB_MODULE") {
        Some(path) => PathBuf::from(path),
        None => {
            // Watched as a folder that exists, so that cargo does not rerun this every build.
            let folder = root.join("target").join("web");
            let _ = std::fs::create_dir_all(&folder);
            println!("cargo:rerun-if-changed={}", folder.display());
            folder.join("charrnn.wasm")
        }
    };
    // A path that does not exist would make cargo rerun this every build; the folder's watch
    // sees the module appear.
    if module.exists() {
        println!("cargo:rerun-if-changed={}", module.display());
    }
    let bytes = std::fs::read(&module).unwrap_or_default();
    std::fs::write(&out, bytes).expect("OUT_DIR is writable");
}
