//! A `knockgate-agent` process inside a lab's gateway namespace, with its JSON event log;
//! killed and its files removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::{Lab, Netns};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The sample policy the tests and the lab use: tcp/22 behind a four-knock sequence.
pub fn ssh_policy(timeout: &str, sequence: &[&str]) -> String {
    let seq: Vec<String> = sequence.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\ntimeout = \"{timeout}\"\nsequence = [{}]\nsequence_timeout = \"3s\"\n",
        seq.join(", ")
    )
}

/// Whether the stories run with every fixed sequence matched by the agent itself
/// (`KGT_SEQUENCES=userspace`, a second pass scripts/test.sh makes) instead of the
/// default, in the kernel where a policy allows it.
pub fn userspace_sequences() -> bool {
    std::env::var("KGT_SEQUENCES").is_ok_and(|v| v == "userspace")
}

/// A scratch directory for one agent: config, state, log.
pub struct Workdir {
    pub path: PathBuf,
}

impl Workdir {
    pub fn new() -> Workdir {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kgt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("workdir");
        Workdir { path }
    }

    /// Write an agent config with `[agent]` filled in and `rest` appended; returns its path.
    pub fn config(&self, rest: &str) -> PathBuf {
        self.config_named("gw1", rest)
    }

    /// The same for an agent called `name`, with its own file and state directory.
    pub fn config_named(&self, name: &str, rest: &str) -> PathBuf {
        let file = if name == "gw1" {
            "agent.toml".to_string()
        } else {
            format!("{name}.toml")
        };
        let state = if name == "gw1" {
            "state".to_string()
        } else {
            format!("state-{name}")
        };
        let matching = if userspace_sequences() {
            "sequence_matching = \"userspace\"\n"
        } else {
            ""
        };
        let text = format!(
            "[agent]\nname = \"{name}\"\ninterfaces = [\"{}\"]\nstate_dir = \"{}\"\n{matching}\n{rest}",
            Lab::GW_IFACE,
            self.path.join(state).display()
        );
        let p = self.path.join(file);
        std::fs::write(&p, text).expect("write config");
        p
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A running agent.
pub struct AgentProc {
    child: Child,
    pub log: PathBuf,
}

impl AgentProc {
    /// Start the agent in the lab's gateway with `config` and wait until it is enforcing.
    pub fn start(lab: &Lab, config: &Path, extra: &[&str]) -> AgentProc {
        Self::start_in(&lab.gw, config, extra)
    }

    /// Start the agent inside namespace `ns`.
    pub fn start_in(ns: &Netns, config: &Path, extra: &[&str]) -> AgentProc {
        Self::start_in_bin(ns, &crate::bin("knockgate-agent"), config, extra)
    }

    /// [`AgentProc::start`] with another agent binary, `bin` (a benchmark comparing builds).
    pub fn start_bin(lab: &Lab, bin: &Path, config: &Path, extra: &[&str]) -> AgentProc {
        Self::start_in_bin(&lab.gw, bin, config, extra)
    }

    /// Start the agent binary `bin` inside namespace `ns` and wait until it is enforcing.
    pub fn start_in_bin(ns: &Netns, bin: &Path, config: &Path, extra: &[&str]) -> AgentProc {
        let log =
            config.with_file_name(format!("agent-{}.log", SEQ.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = ns.cmd(bin);
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--log-format", "json"]);
        if !extra.contains(&"--log-level") {
            cmd.args(["--log-level", "debug"]);
        }
        let child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn agent");
        let mut agent = AgentProc { child, log };
        let started =
            agent.wait_event(|v| v["message"] == "agent started", Duration::from_secs(10));
        if started.is_none() {
            panic!("agent did not start; log:\n{}", agent.log_text());
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every JSON log line so far.
    pub fn events(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Decision events (`event` field) with this name.
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["event"] == name)
            .collect()
    }

    /// Decision events with this name once there is at least one, or none after
    /// `within`. A grant a kernel door opened is told after it opened, so a story that
    /// has just connected waits for its events.
    pub fn events_named_within(&mut self, name: &str, within: Duration) -> Vec<Value> {
        let _ = self.wait_event(|v| v["event"] == name, within);
        self.events_named(name)
    }

    /// Poll the log until a line satisfies `pred`.
    pub fn wait_event(&mut self, pred: impl Fn(&Value) -> bool, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.events().into_iter().find(&pred) {
                return Some(v);
            }
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no cleanup runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("agent did not exit on SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill9();
        }
    }
}
