//! Embeds the effe-abi crate's sources (Cargo.toml, README, src/**) in effe-host, for
//! `effe-host new --effe-abi vendor`: a new effe then builds against exactly the effe-abi this
//! host was built with, with no registry (effe-abi is not published) and no checkout.
//!
//! The files are found by walking `effe-abi/`, never listed by hand, so that a file added to
//! the crate is carried without a change here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .join("effe-abi");
    // A directory is scanned whole by cargo: a file added or removed under it reruns this
    // script. Edits to a file already embedded rebuild the host anyway (include_bytes! tracks
    // it).
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    if env::var_os("CARGO_FEATURE_VENDOR_EFFE_ABI").is_none() {
        let empty = "/// Built without the `vendor-effe-abi` feature: no copy.\n\
                     pub const EFFE_ABI_FILES: &[(&str, &[u8])] = &[];\n";
        fs::write(out.join("effe_abi_files.rs"), empty).expect("write effe_abi_files.rs");
        return;
    }

    let mut files = Vec::new();
    for name in ["Cargo.toml", "README.md"] {
        if root.join(name).is_file() {
            files.push(PathBuf::from(name));
        }
    }
    walk(&root, Path::new("src"), &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f == Path::new("Cargo.toml"))
            && files.iter().any(|f| f == Path::new("src/lib.rs")),
        "no effe-abi crate at {}",
        root.display()
    );

    let mut table = String::from(
        "/// effe-abi's files, as (path relative to the crate, contents), sorted by path.\n\
         pub const EFFE_ABI_FILES: &[(&str, &[u8])] = &[\n",
    );
    for file in &files {
        let relative = file.to_str().expect("effe-abi's file names are UTF-8");
        let absolute = root.join(file);
        let absolute = absolute.to_str().expect("the checkout's path is UTF-8");
        writeln!(table, "    ({relative:?}, include_bytes!({absolute:?})),").unwrap();
    }
    table.push_str("];\n");
    fs::write(out.join("effe_abi_files.rs"), table).expect("write effe_abi_files.rs");
}

/// Every regular file under `root/dir`, as paths relative to `root`.
fn walk(root: &Path, dir: &Path, files: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("read {}: {e}", root.join(dir).display()));
    for entry in entries {
        let entry = entry.expect("read a directory entry");
        let name = entry.file_name();
        // An editor's swap or backup file is not part of the crate.
        let name_str = name.to_string_lossy();
        if name_str.starts_with('.') || name_str.ends_with('~') {
            continue;
        }
        let path = dir.join(&name);
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            walk(root, &path, files);
        } else if kind.is_file() {
            files.push(path);
        }
    }
}
