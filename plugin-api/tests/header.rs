//! The checked-in C header `include/broker_plugin.h` is what cbindgen makes from this crate
//! with `cbindgen.toml`. A stale header fails this test; `UPDATE_HEADER=1` rewrites it:
//!
//! ```text
//! UPDATE_HEADER=1 cargo test -p plugin-api --test header
//! ```

use std::path::Path;

#[test]
fn c_header_is_up_to_date() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");

    let path = crate_dir.join("include/broker_plugin.h");
    if std::env::var_os("UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != generated {
        let first_difference = checked_in
            .lines()
            .chain(std::iter::repeat("<end of file>"))
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (old, new))| old != new)
            .map(|(i, (old, new))| format!("line {}: checked in {old:?}, generated {new:?}", i + 1))
            .unwrap_or_else(|| "the end of the file".to_owned());
        panic!(
            "{} is stale (the ABI changed or cbindgen.toml did; first difference at {first_difference}); \
             regenerate it with\n\n    UPDATE_HEADER=1 cargo test -p plugin-api --test header\n\nand check the \
             diff in.",
            path.display()
        );
    }
}
