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
