//! Test fixture (not published): a perfectly good shared library with no effe root module in
//! it, as if someone pointed `--plugin` at the wrong `.so`.

/// Something to export, so the library is not empty.
pub fn answer() -> u32 {
    42
}
