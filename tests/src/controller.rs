//! A `knockgate-controller` process inside a test host's namespace, and `knockadm` run
//! against it; killed and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{Netns, sh};

/// An initialised data directory and, while running, the controller process.
pub struct Controller {
    pub data: PathBuf,
    /// knockadm's identity (`admin.pem`, in the data or PKI dir).
    identity: PathBuf,
    pub ca_sha256: String,
    /// `https://ADDR:7443` as agents reach it.
    pub url: String,
    ns_path: String,
    db: Option<String>,
    /// More `run` flags.
    extra: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Controller {
    /// `init` in `data` with `addr` as an extra SAN, then `run` listening on `addr:7443`.
    pub fn start(ns: &Netns, data: &Path, addr: &str, db: Option<String>) -> Controller {
        Self::start_with(ns, data, addr, db, &[])
    }

    /// [`Controller::start`] with more `run` flags.
    pub fn start_with(
        ns: &Netns,
        data: &Path,
        addr: &str,
        db: Option<String>,
        extra: &[&str],
    ) -> Controller {
        Self::start_named(ns, data, &[addr], db, extra)
    }

    /// [`Controller::start_with`], the server certificate naming every one of `addrs`
    /// (the addresses of replicas that will share it); listens on the first.
    pub fn start_named(
        ns: &Netns,
        data: &Path,
        addrs: &[&str],
        db: Option<String>,
        extra: &[&str],
    ) -> Controller {
        std::fs::create_dir_all(data.parent().unwrap_or(data)).expect("parent dir");
        let addr = addrs[0];
        let out = sh(Command::new(crate::bin("knockgate-controller"))
            .arg("init")
            .arg("--data-dir")
            .arg(data)
            .args(addrs.iter().flat_map(|a| ["--san", a])));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ca_sha256 = text
            .lines()
            .find_map(|l| l.strip_prefix("ca sha256: "))
            .unwrap_or_else(|| panic!("no fingerprint in init output: {text}"))
            .trim()
            .to_string();
        let mut c = Controller {
            data: data.to_path_buf(),
            identity: data.join("admin.pem"),
            ca_sha256,
            url: format!("https://{addr}:7443"),
            ns_path: ns.name.clone(),
            db,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
            log: data.with_extension("log"),
        };
        c.run(ns);
        c
    }

    /// Another replica of this controller on the same PostgreSQL database, in `ns` at
    /// `addr` (a name of the server certificate: see [`Controller::start_named`]): no
    /// `init`, the CA and certificates read from this one's data dir with `--pki-dir`.
    pub fn replica(&self, ns: &Netns, data: &Path, addr: &str) -> Controller {
        std::fs::create_dir_all(data).expect("replica data dir");
        let mut extra = self.extra.clone();
        extra.extend(["--pki-dir".to_owned(), self.data.display().to_string()]);
        let mut c = Controller {
            data: data.to_path_buf(),
            identity: self.identity.clone(),
            ca_sha256: self.ca_sha256.clone(),
            url: format!("https://{addr}:7443"),
            ns_path: ns.name.clone(),
            db: self.db.clone(),
            extra,
            child: None,
            log: data.with_extension("log"),
        };
        c.run(ns);
        c
    }

    /// (Re)start the process and wait until it accepts connections.
    pub fn run(&mut self, ns: &Netns) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = ns.cmd(crate::bin("knockgate-controller"));
        cmd.arg("run").arg("--data-dir").arg(&self.data).args([
            "--listen",
            "0.0.0.0:7443",
            "--log-format",
            "json",
        ]);
        if let Some(db) = &self.db {
            cmd.args(["--database-url", db]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn controller");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let up = ns.run(move || {
            while Instant::now() < deadline {
                if std::net::TcpStream::connect_timeout(
                    &"127.0.0.1:7443".parse().expect("addr"),
                    Duration::from_millis(100),
                )
                .is_ok()
                {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(up, "controller did not start:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop the process (SIGKILL); the data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run knockadm in the controller's namespace with its admin identity.
    pub fn knockadm(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_path])
            .arg(crate::bin("knockadm"))
            .env("KNOCKADM_CONTROLLER", "https://127.0.0.1:7443")
            .env("KNOCKADM_IDENTITY", &self.identity)
            .args(args);
        crate::otel::apply(&mut c);
        c.output().expect("run knockadm")
    }

    /// `knockadm user add NAME --profile-out DIR/NAME.toml`; returns the profile's path.
    pub fn add_user(&self, name: &str, dir: &Path) -> PathBuf {
        let profile = dir.join(format!("{name}.toml"));
        let out = self.knockadm(
            &["user", "add", name, "--profile-out"]
                .into_iter()
                .chain([profile.to_str().expect("utf-8 path")])
                .collect::<Vec<_>>(),
        );
        assert!(
            out.status.success(),
            "user add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile
    }

    /// `knockadm policy add NAME --open tcp/22 --users USERS --agents SELECTOR` and
    /// `extra`, then wait until every agent has applied it.
    pub fn add_ssh_policy(&self, name: &str, users: &str, agents: &str, extra: &[&str]) {
        let mut args = vec![
            "policy", "add", name, "--open", "tcp/22", "--users", users, "--agents", agents,
        ];
        args.extend_from_slice(extra);
        self.knockadm_json(&args);
        assert!(
            wait_applied(self, Duration::from_secs(10)),
            "policy {name} applied:\n{}",
            self.log_text()
        );
    }

    /// knockadm with `--output json`, parsed; panics with stderr on failure.
    pub fn knockadm_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.knockadm(&all);
        assert!(
            out.status.success(),
            "knockadm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "knockadm {args:?}: bad json {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `knockadm agent add NAME --label LABEL`, then `knockgate-agent enroll` on the host with
/// the printed token and fingerprint, then the agent itself. Returns the running agent
/// and the token (spent).
pub fn enroll_and_start(
    ctl: &Controller,
    ns: &Netns,
    work: &crate::agent::Workdir,
    name: &str,
    label: &str,
) -> (crate::agent::AgentProc, String) {
    let (config, token) = enroll(ctl, ns, work, name, label);
    (crate::agent::AgentProc::start_in(ns, &config, &[]), token)
}

/// `knockadm agent add NAME --label LABEL`, then `knockgate-agent enroll` on the host with
/// the printed token and fingerprint. Returns the agent's config file (with
/// `[controller]` added) and the token (spent).
pub fn enroll(
    ctl: &Controller,
    ns: &Netns,
    work: &crate::agent::Workdir,
    name: &str,
    label: &str,
) -> (PathBuf, String) {
    let added = ctl.knockadm_json(&["agent", "add", name, "--label", label]);
    let token = added["token"].as_str().expect("token").to_string();
    let config = work.config_named(name, "");
    sh(ns
        .cmd(crate::bin("knockgate-agent"))
        .arg("enroll")
        .arg("--config")
        .arg(&config)
        .args(["--controller", &ctl.url, "--token", &token])
        .args([
            "--ca-sha256",
            added["ca_sha256"].as_str().expect("fingerprint"),
        ]));
    (config, token)
}

/// `knockgate-agent enroll` on the host again with a `token` already spent (under a fresh
/// config file named `NAME-again`); what it printed and how it exited.
pub fn enroll_again(
    ctl: &Controller,
    ns: &Netns,
    work: &crate::agent::Workdir,
    name: &str,
    token: &str,
) -> std::process::Output {
    ns.cmd(crate::bin("knockgate-agent"))
        .arg("enroll")
        .arg("--config")
        .arg(work.config_named(&format!("{name}-again"), ""))
        .args(["--controller", &ctl.url, "--token", token])
        .args(["--ca-sha256", &ctl.ca_sha256])
        .output()
        .expect("enroll again")
}

/// Wait until every agent is connected and has applied the controller's current version.
pub fn wait_applied(ctl: &Controller, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let list = ctl.knockadm_json(&["agent", "list"]);
        if list.as_array().is_some_and(|a| {
            a.iter()
                .all(|x| x["connected"] == true && x["applied_version"] == x["current_version"])
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
