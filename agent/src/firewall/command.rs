//! The `command` backend: knockd-style `open_command` / `close_command` run through
//! `/bin/sh -c` with `%IP%`, `%PROTO%`, `%PORT%` and `%TIMEOUT%` substituted.
//!
//! Commands cannot expire anything by themselves, so the open grants are written to the
//! state directory: a restarted agent adopts them and still runs their close commands.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{GrantKey, Proto, Ruleset};

use super::{Firewall, FirewallError, Held};

/// Runs the operator's commands and remembers what is open.
pub struct CommandFirewall {
    open_command: String,
    close_command: Option<String>,
    state_file: PathBuf,
    /// Open grants: wall-clock expiry (unix seconds) and label.
    open: BTreeMap<GrantKey, (u64, Option<GrantLabel>)>,
}

impl CommandFirewall {
    /// A backend keeping its state in `state_dir/command-grants`.
    pub fn new(open_command: String, close_command: Option<String>, state_dir: &Path) -> Self {
        let state_file = state_dir.join("command-grants");
        let open = load(&state_file);
        CommandFirewall {
            open_command,
            close_command,
            state_file,
            open,
        }
    }

    fn run(&self, template: &str, key: &GrantKey, timeout: Duration) -> Result<(), FirewallError> {
        let cmd = template
            .replace("%IP%", &key.addr.to_string())
            .replace("%PROTO%", key.proto.as_str())
            .replace("%PORT%", &key.port.to_string())
            .replace("%TIMEOUT%", &timeout.as_secs().to_string());
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| FirewallError::Command {
                command: cmd.clone(),
                reason: e.to_string(),
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(FirewallError::Command {
                command: cmd,
                reason: status.to_string(),
            })
        }
    }

    /// One line a grant: `ADDR PROTO PORT EXPIRY [LABEL]` (the label has no newline).
    fn save(&self) -> Result<(), FirewallError> {
        crate::state::write_atomic(&self.state_file, |f| {
            for (k, (exp, label)) in &self.open {
                write!(f, "{} {} {} {}", k.addr, k.proto, k.port, exp)?;
                if let Some(c) = label.as_ref().and_then(GrantLabel::to_comment) {
                    write!(f, " {c}")?;
                }
                writeln!(f)?;
            }
            Ok(())
        })
        .map_err(|e| FirewallError::Command {
            command: format!("write {}", self.state_file.display()),
            reason: e.to_string(),
        })
    }

    /// Close every grant (`knockgate-agent uninstall`); the first failure is returned
    /// after trying them all.
    pub fn close_all(&mut self) -> Result<(), FirewallError> {
        let keys: Vec<GrantKey> = self.open.keys().copied().collect();
        let mut first_err = None;
        for k in keys {
            if let Err(e) = self.close(&k) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Read the state file; lines that do not parse are skipped (the file is ours).
fn load(path: &Path) -> BTreeMap<GrantKey, (u64, Option<GrantLabel>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(5, ' ');
            let addr = f.next()?.parse().ok()?;
            let proto = match f.next()? {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => return None,
            };
            let port = f.next()?.parse().ok()?;
            let exp = f.next()?.parse().ok()?;
            let label = f.next().and_then(GrantLabel::from_comment);
            Some((GrantKey { addr, proto, port }, (exp, label)))
        })
        .collect()
}

impl Firewall for CommandFirewall {
    fn ensure_base(&mut self, ruleset: &Ruleset) -> Result<(), FirewallError> {
        // The config refuses forwards with this backend; never pretend to enforce one.
        if let Some((outer, to)) = ruleset.forwards.iter().next() {
            return Err(FirewallError::Command {
                command: self.open_command.clone(),
                reason: format!(
                    "cannot forward {outer} to {to}: only the nftables backend forwards"
                ),
            });
        }
        Ok(())
    }

    fn open(
        &mut self,
        key: &GrantKey,
        timeout: Duration,
        label: &GrantLabel,
    ) -> Result<(), FirewallError> {
        // A grant already open only gets a later expiry; running open_command twice would
        // add a duplicate rule for most commands.
        if !self.open.contains_key(key) {
            self.run(&self.open_command, key, timeout)?;
        }
        let expiry = unix_now().saturating_add(timeout.as_secs());
        self.open.insert(*key, (expiry, Some(label.clone())));
        self.save()
    }

    fn close(&mut self, key: &GrantKey) -> Result<(), FirewallError> {
        if self.open.remove(key).is_none() {
            return Ok(());
        }
        let result = match &self.close_command {
            Some(cmd) => self.run(cmd, key, Duration::ZERO),
            None => Ok(()),
        };
        self.save()?;
        result
    }

    fn list(&mut self) -> Result<Vec<Held>, FirewallError> {
        let now = unix_now();
        Ok(self
            .open
            .iter()
            .map(|(k, (exp, label))| Held {
                key: *k,
                remaining: Duration::from_secs(exp.saturating_sub(now)),
                label: label.clone(),
            })
            .collect())
    }

    fn expires_grants(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_commands_with_substitutions_and_remembers_grants() {
        let dir = std::env::temp_dir().join(format!("kg-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("log");
        let open = format!(
            "echo open %IP% %PROTO% %PORT% %TIMEOUT% >> {}",
            log.display()
        );
        let close = format!("echo close %IP% %PROTO% %PORT% >> {}", log.display());
        let key = GrantKey {
            addr: "fd00:4b47::2".parse().expect("ip"),
            proto: Proto::Tcp,
            port: 22,
        };
        let mut fw = CommandFirewall::new(open.clone(), Some(close.clone()), &dir);
        let label = GrantLabel {
            grant_ref: "r-1".into(),
            policy: "ssh".into(),
            user: Some("alice".into()),
        };
        fw.open(&key, Duration::from_secs(30), &label)
            .expect("open");
        fw.open(&key, Duration::from_secs(30), &label)
            .expect("reopen");
        // A new instance (a restarted agent) sees the grant and can close it.
        let mut fw = CommandFirewall::new(open, Some(close), &dir);
        let held = fw.list().expect("list");
        assert_eq!(held.len(), 1);
        assert!(held[0].remaining > Duration::from_secs(28));
        assert_eq!(held[0].label.as_ref(), Some(&label), "the label survives");
        fw.close(&key).expect("close");
        fw.close(&key).expect("closing twice is fine");
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(
            text,
            "open fd00:4b47::2 tcp 22 30\nclose fd00:4b47::2 tcp 22\n"
        );
        assert!(fw.list().expect("list").is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_failing_command_is_an_error() {
        let dir = std::env::temp_dir().join(format!("kg-cmdf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut fw = CommandFirewall::new("exit 3".into(), None, &dir);
        let key = GrantKey {
            addr: [10, 240, 0, 2].into(),
            proto: Proto::Udp,
            port: 53,
        };
        assert!(
            fw.open(&key, Duration::from_secs(1), &GrantLabel::default())
                .is_err()
        );
        assert!(
            fw.list().expect("list").is_empty(),
            "a failed open is not a grant"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
