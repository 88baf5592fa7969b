//! The p0f signature database `require_os` is judged by, read from `agent.p0f_db` only
//! when a policy requires an OS. A database that cannot be read or parsed refuses the
//! config that needs it (fail closed): at start that is a config error (exit 64), from
//! the controller a refused config (the agent keeps enforcing the one it has).

use std::sync::Arc;

use knockgate_agent_core::config::Config;
use knockgate_agent_core::p0f::Database;

/// The database for `config`, or `None` when no policy requires an OS.
pub fn load(config: &Config) -> Result<Option<Arc<Database>>, String> {
    if !config.fingerprints() {
        return Ok(None);
    }
    let path = &config.agent.p0f_db;
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "agent.p0f_db: cannot read {} ({e}); require_os needs p0f's signatures (Debian: apt install p0f)",
            path.display()
        )
    })?;
    let db =
        Database::parse(&text).map_err(|e| format!("agent.p0f_db: {}: {e}", path.display()))?;
    if db.is_empty() {
        return Err(format!(
            "agent.p0f_db: {}: no [tcp:request] signatures",
            path.display()
        ));
    }
    Ok(Some(Arc::new(db)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(p0f_db: &str, require_os: bool) -> Config {
        let os = if require_os {
            "require_os = [\"Linux\"]\n"
        } else {
            ""
        };
        Config::parse(&format!(
            "[agent]\nname = \"gw1\"\ninterfaces = [\"eth0\"]\np0f_db = \"{p0f_db}\"\n\n\
             [[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\ntimeout = \"30s\"\n\
             sequence = [\"tcp/7000\"]\n{os}"
        ))
        .expect("config")
    }

    #[test]
    fn a_missing_or_bad_database_refuses_what_needs_it() {
        let dir = std::env::temp_dir().join(format!("kgt-p0f-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = dir.join("missing.fp");
        let err = load(&config(missing.to_str().expect("path"), true)).unwrap_err();
        assert!(err.starts_with("agent.p0f_db: cannot read"), "{err}");
        let bad = dir.join("bad.fp");
        std::fs::write(&bad, "[tcp:request]\nsig = 4:64:0\n").expect("write");
        let err = load(&config(bad.to_str().expect("path"), true)).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        // Nothing asks for an OS: the file is not even read.
        assert!(
            load(&config(missing.to_str().expect("path"), false))
                .unwrap()
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
