//! Build script. It gives `libunireward.so` its SONAME on Linux, `libunireward.so.<UR_ABI_VERSION>` (two ABI
//! versions install side by side; a program never loads a library of another ABI). With the `cxx` feature it also
//! compiles the C++ half of the cxx bridge (`src/cxx_bridge.rs`) into the crate, so `libunireward.a` carries it
//! (ordinary builds need no C++ compiler).
//!
//! `UNIREWARD_CXX_INCLUDE_DIR` (set by `cmake/CMakeLists.txt`): where to copy the generated headers,
//! `unireward_cxx.h` and `rust/cxx.h`, since cargo's `OUT_DIR` is not a path a C++ build can name.

include!("src/ffi/abi_version.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/ffi/abi_version.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libunireward.so.{UR_ABI_VERSION}");
    }
    // `cfg(feature)` is how a build script sees CARGO_FEATURE_CXX; cxx-build is only a dependency with it.
    #[cfg(feature = "cxx")]
    cxx_bridge::build();
}

#[cfg(feature = "cxx")]
mod cxx_bridge {
    use std::path::{Path, PathBuf};

    const BRIDGE: &str = "src/cxx_bridge.rs";
    const INCLUDE_DIR_VAR: &str = "UNIREWARD_CXX_INCLUDE_DIR";

    pub fn build() {
        println!("cargo:rerun-if-changed={BRIDGE}");
        println!("cargo:rerun-if-env-changed={INCLUDE_DIR_VAR}");
        cxx_build::bridge(BRIDGE).std("c++17").compile("unireward-cxx");
        if let Some(dir) = std::env::var_os(INCLUDE_DIR_VAR) {
            export_headers(Path::new(&dir));
        }
    }

    /// Copies the bridge's header and cxx's runtime header out of `OUT_DIR/cxxbridge/include`.
    fn export_headers(dir: &Path) {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let generated = out.join("cxxbridge/include");
        let copies = [
            (generated.join("unireward").join(format!("{BRIDGE}.h")), dir.join("unireward_cxx.h")),
            (generated.join("rust/cxx.h"), dir.join("rust/cxx.h")),
        ];
        for (from, to) in copies {
            std::fs::create_dir_all(to.parent().expect("a file path has a parent"))
                .and_then(|()| std::fs::copy(&from, &to))
                .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
            // Rerun (and copy again) when a copy is deleted, e.g. with the CMake build folder.
            println!("cargo:rerun-if-changed={}", to.display());
        }
    }
}
