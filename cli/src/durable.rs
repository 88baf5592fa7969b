//! One way to replace a small file that holds secrets or state (a profile, its fwknop rc
//! file, the one-time key counter): a new 0600 file at `tmp` in the same directory,
//! written and synced, renamed over `path`, then the directory synced. A crash leaves the
//! old or the new file, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use crate::profile::PROFILE_MODE;

/// Replaces `path` with `bytes` through `tmp` (a leftover there, from a crash, is removed
/// first; `create_new` never follows a link planted at that name).
///
/// # Errors
/// The first IO error; `tmp` is removed again when the write or the rename failed.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PROFILE_MODE)
        .open(tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(tmp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(tmp);
        return Err(err);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all())
}
