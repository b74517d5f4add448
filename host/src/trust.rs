//! Whether a plugin may be loaded: only root or the host's user may be able to write or
//! replace it (dlopen runs the library's constructors, so anyone else who can is a
//! code-injection door), and what is checked is what gets loaded (one descriptor, loaded
//! through `/proc/self/fd/N`).

use std::fs::{self, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `/proc/self/fd/N` for `file`, if /proc is mounted and shows that descriptor as this inode.
pub fn descriptor_path(file: &fs::File, meta: &Metadata) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let seen = fs::metadata(&path).ok()?;
    (seen.dev() == meta.dev() && seen.ino() == meta.ino()).then_some(path)
}

/// Checks that only root or the host's effective user can write or replace the plugin: the file
/// (`meta`, from the open descriptor) is owned by one of them and not writable by group or
/// others, and so is every directory up to `/`, except that a sticky directory (like /tmp) may
/// be writable by all, since there only an entry's owner may rename or delete it.
///
/// The directories are checked by path: std cannot open a directory without read permission
/// (no `O_PATH`, no `openat`), and path resolution is what the check is about. Once they pass,
/// only root or the host's user can change what the canonical path names, so if it still names
/// the opened inode afterwards, that inode is the one that sits in those directories.
pub fn check_trusted(canonical: &Path, meta: &Metadata) -> Result<(), String> {
    let euid = effective_uid()
        .map_err(|e| format!("cannot read the host's uid from /proc/self/status: {e}"))?;
    let trusted = |uid: u32| uid == 0 || uid == euid;
    if !trusted(meta.uid()) {
        return Err(format!(
            "owned by uid {}, not by root or the host's user (uid {euid}); fix with chown, or \
             pass --allow-insecure-plugin",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o}); fix with chmod go-w, or pass \
             --allow-insecure-plugin",
            meta.mode() & 0o7777
        ));
    }
    for dir in canonical.ancestors().skip(1) {
        let shown = dir.display();
        let d = fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot check its directory {shown}: {e}"))?;
        if !d.is_dir() {
            return Err(format!(
                "its directory {shown} changed while being checked; try again"
            ));
        }
        if !trusted(d.uid()) {
            return Err(format!(
                "its directory {shown} is owned by uid {}, not by root or the host's user (uid \
                 {euid}); fix with chown, or pass --allow-insecure-plugin",
                d.uid()
            ));
        }
        if d.mode() & 0o022 != 0 && d.mode() & 0o1000 == 0 {
            return Err(format!(
                "its directory {shown} is writable by group or others (mode {:o}, not sticky); \
                 fix with chmod go-w, or pass --allow-insecure-plugin",
                d.mode() & 0o7777
            ));
        }
    }
    let now = fs::metadata(canonical).map_err(|e| format!("changed while being checked: {e}"))?;
    if (now.dev(), now.ino()) != (meta.dev(), meta.ino()) {
        return Err("replaced while being checked; try again".to_owned());
    }
    Ok(())
}

/// The host's effective uid: the second field of the `Uid:` line of `/proc/self/status` (real,
/// effective, saved, filesystem). std has no `geteuid`; `libc`'s would need `unsafe`, and a crate
/// for one number is not worth it when the load needs /proc anyway.
fn effective_uid() -> io::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no effective uid in it"))
}
