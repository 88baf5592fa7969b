//! The last config from the controller that the agent applied, kept in
//! `state_dir/controller-config.pb` (protobuf bytes of a full `AgentConfig`), so a
//! restarted agent enforces it before it has reached the controller, or if it never does.
//! It holds user keys: the file is written 0600, atomically.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use knockgate_proto::api::AgentConfig;
use prost::Message;

/// The cache file's name in the state directory.
pub const FILE: &str = "controller-config.pb";

/// Why the cached config cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a controller config: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
}

/// The cached config, if there is one.
pub fn load(state_dir: &Path) -> Result<Option<AgentConfig>, CacheError> {
    let path = state_dir.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Read { path, source }),
    };
    AgentConfig::decode(&bytes[..])
        .map(Some)
        .map_err(|source| CacheError::Decode { path, source })
}

/// Replace the cached config with `config`.
pub fn save(state_dir: &Path, config: &AgentConfig) -> io::Result<()> {
    crate::state::write_atomic(&state_dir.join(FILE), |f| {
        f.write_all(&config.encode_to_vec())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::convert::tests::{alice, full, ssh};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trips_privately_and_reports_garbage() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(load(dir.path()).expect("none").is_none());
        let c = full(7, vec![ssh()], vec![alice()]);
        save(dir.path(), &c).expect("save");
        assert_eq!(load(dir.path()).expect("load"), Some(c));
        let mode = fs::metadata(dir.path().join(FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(dir.path().join(FILE), b"\xff\xff\xff").expect("write");
        let e = load(dir.path()).expect_err("garbage").to_string();
        assert!(e.contains("is not a controller config"), "{e}");
    }
}
