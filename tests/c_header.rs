//! `include/unireward.h` is generated from `src/ffi/` by cbindgen and committed: this test regenerates it and
//! fails when the committed file differs. `UNIREWARD_BLESS_HEADER=1 cargo test --test c_header` rewrites it.

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen could not parse src/ffi");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn committed_header_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/unireward.h");
    let fresh = generate();
    if std::env::var_os("UNIREWARD_BLESS_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/unireward.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "include/unireward.h is stale: rerun `UNIREWARD_BLESS_HEADER=1 cargo test --test c_header` and commit it\n\
         first difference at line {}",
        committed.lines().zip(fresh.lines()).position(|(a, b)| a != b).map_or(0, |i| i + 1)
    );
}

#[test]
fn version_macros_match_the_crate() {
    let header = generate();
    for (name, value) in [
        ("UR_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("UR_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("UR_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(header.contains(&format!("#define {name} {value}\n")), "{name} should be {value}");
    }
    // SAFETY: ur_version_string returns a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(unireward::ffi::ur_version_string()) };
    assert_eq!(version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}
