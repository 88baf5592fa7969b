//! Files in `state_dir`: the one way the agent replaces a state file. Every write goes to
//! a temporary file created 0600 (state files hold secrets or replay history), is synced,
//! renamed over the old one, and the directory is synced, so a crash leaves the old file
//! or the new one, never half of either.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use knockgate_agent_core::ruleset::Access;

/// The protected ports this agent last installed, one `proto/port` a line.
const PROTECTED: &str = "protected";

/// Replace `path` with what `fill` writes, durably and atomically, mode 0600.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A leftover from a crash may carry another mode: start afresh.
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut out = io::BufWriter::new(file);
    fill(&mut out)?;
    out.flush()?;
    out.get_ref().sync_all()?;
    drop(out);
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Open `path` for appending, creating it 0600. Callers sync what they append before
/// acting on it.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Sync the directory holding `path`, so a rename or a new file in it survives a crash.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

/// The protected set installed last (by any run), if one was recorded. A line that does not
/// parse is an error: a damaged record must not shrink what is protected.
pub fn load_protected(state_dir: &Path) -> io::Result<Option<BTreeSet<Access>>> {
    let path = state_dir.join(PROTECTED);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut set = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let access = line.parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: line {}: {line:?}: {e}", path.display(), i + 1),
            )
        })?;
        set.insert(access);
    }
    Ok(Some(set))
}

/// Record `protected` as the set installed now.
pub fn save_protected(state_dir: &Path, protected: &BTreeSet<Access>) -> io::Result<()> {
    write_atomic(&state_dir.join(PROTECTED), |f| {
        for a in protected {
            writeln!(f, "{a}")?;
        }
        Ok(())
    })
}

/// Forget the recorded protected set (`knockgate-agent uninstall`).
pub fn forget_protected(state_dir: &Path) -> io::Result<()> {
    match fs::remove_file(state_dir.join(PROTECTED)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replaces_the_file_whole_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("kg-state-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("thing");
        fs::write(&path, "old contents that are longer").expect("seed");
        write_atomic(&path, |f| f.write_all(b"new")).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file() {
        let dir = std::env::temp_dir().join(format!("kg-state-fail-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("thing");
        fs::write(&path, "old").expect("seed");
        let err = write_atomic(&path, |_| Err(io::Error::other("boom")));
        assert!(err.is_err());
        assert_eq!(fs::read_to_string(&path).expect("read"), "old");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_protected_set_round_trips_and_damage_is_an_error() {
        let dir = std::env::temp_dir().join(format!("kg-state-prot-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        assert_eq!(load_protected(&dir).expect("none"), None);
        let set: BTreeSet<Access> = ["tcp/22", "udp/1194"]
            .iter()
            .map(|s| s.parse().expect("access"))
            .collect();
        save_protected(&dir, &set).expect("save");
        assert_eq!(load_protected(&dir).expect("load"), Some(set));
        fs::write(dir.join(PROTECTED), "tcp/22\ntcp/99999\n").expect("damage");
        let err = load_protected(&dir).expect_err("damaged");
        assert!(err.to_string().contains("line 2"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
