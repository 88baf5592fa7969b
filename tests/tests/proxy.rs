//! End to end, knock then connect: the real OpenSSH client logs in to a real sshd behind
//! an enrolled gateway with `knocker proxy` as its ProxyCommand and the profile knockadm
//! wrote. Before that, the same ssh without the proxy times out, and `knocker proxy` with
//! a wrong key is refused: it gives up within its wait with one line and exit 1.
//!
//! sshd (Debian's openssh-server) runs in the gateway's namespace with its own config,
//! host key and authorized keys in the work dir; ssh (openssh-client) runs in the
//! client's with `-F` and its own key. Every sshd and client process is killed on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use knockgate_tests::agent::{AgentProc, Workdir};
use knockgate_tests::controller::{Controller, enroll_and_start};
use knockgate_tests::fleet::Fleet;
use knockgate_tests::netns::{Netns, sh};

/// The name the client resolves gw1's address by (its namespace's hosts file).
const GW_NAME: &str = "gw1.knockgate.test";
/// How long one ssh run may take before it is killed and the test fails.
const SSH_LIMIT: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs root: network namespaces, nftables, pcap, sshd (scripts/test.sh runs it)"]
fn ssh_logs_in_through_knocker_proxy_and_not_without() {
    let story = ProxyStory::start();
    story.a_refused_knock_ends_in_one_line_within_the_wait();
    story.plain_ssh_times_out();
    story.ssh_with_knocker_proxy_logs_in();
    story.the_grant_lets_plain_ssh_in_while_it_lasts();
}

/// gw1 enrolled (role=edge) with sshd on tcp/22, a policy admitting alice there by SPA,
/// the client, alice's profile and two ssh configs. Fields drop in order: the client's
/// processes, sshd, the agent, the controller, the work dir, then the hosts.
struct ProxyStory {
    _client_procs: Reaper,
    _sshd: Sshd,
    gw1: AgentProc,
    _ctl: Controller,
    profile: PathBuf,
    work: Workdir,
    fleet: Fleet,
}

impl ProxyStory {
    fn start() -> ProxyStory {
        let fleet = Fleet::new(&["ctl", "gw1", "client"]);
        let client_procs = Reaper(fleet.host(2).ns.name.clone());
        let work = Workdir::new();
        let ctl_addr = fleet.host(0).v4.to_string();
        let ctl = Controller::start(&fleet.host(0).ns, &work.path.join("ctl"), &ctl_addr, None);
        let keys = SshKeys::new(&work.path.join("ssh"));
        let sshd = Sshd::start(&fleet.host(1).ns, &keys);
        let gw = fleet.host(1).addr();
        // Before the agent: sshd answers the client, so what follows is the firewall's doing.
        let banner = fleet
            .host(2)
            .ns
            .run(move || banner(SocketAddr::new(gw, 22)));
        assert!(
            banner
                .as_deref()
                .is_some_and(|b| b.starts_with("SSH-2.0-OpenSSH")),
            "sshd greets the client before the agent runs: {banner:?}\n{}",
            sshd.log_text()
        );
        let (gw1, _) = enroll_and_start(&ctl, &fleet.host(1).ns, &work, "gw1", "role=edge");
        let profile = ctl.add_user("alice", &work.path);
        ctl.add_ssh_policy("ssh", "alice", "role=edge", &["--spa", "--timeout", "60s"]);
        fleet.host(2).ns.hosts(&[(gw, GW_NAME)]);
        let story = ProxyStory {
            _client_procs: client_procs,
            _sshd: sshd,
            gw1,
            _ctl: ctl,
            profile,
            work,
            fleet,
        };
        story.write_ssh_configs(&keys);
        story
    }

    fn client(&self) -> &Netns {
        &self.fleet.host(2).ns
    }

    fn gw(&self) -> IpAddr {
        self.fleet.host(1).addr()
    }

    /// `plain.conf`: ssh straight to the address; `proxy.conf`: host gw1 through
    /// `knocker proxy`, as the README shows, and the same defaults.
    fn write_ssh_configs(&self, keys: &SshKeys) {
        let defaults = format!(
            "Host *\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    IdentityAgent none\n    \
             StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    GlobalKnownHostsFile /dev/null\n    \
             BatchMode yes\n    LogLevel ERROR\n",
            keys.user.display()
        );
        let proxy = format!(
            "Host gw1\n    HostName {GW_NAME}\n    ProxyCommand {} proxy gw1 %h %p --profile {}\n    \
             ConnectTimeout 20\n\n{defaults}",
            knockgate_tests::bin("knocker").display(),
            self.profile.display()
        );
        let plain = format!("Host *\n    ConnectTimeout 2\n\n{defaults}");
        std::fs::write(self.work.path.join("proxy.conf"), proxy).expect("proxy.conf");
        std::fs::write(self.work.path.join("plain.conf"), plain).expect("plain.conf");
    }

    /// `ssh -F WORK/CONFIG DEST echo knocked-in` in the client namespace.
    fn ssh(&self, config: &str, dest: &str) -> Output {
        let mut cmd = self.client().cmd("ssh");
        cmd.arg("-F")
            .arg(self.work.path.join(config))
            .args([dest, "echo", "knocked-in"]);
        run_bounded(&mut cmd, SSH_LIMIT)
    }

    /// A copy of alice's profile with another native SPA key: it knocks, the gateway
    /// refuses, and `knocker proxy` gives up after its wait with one line on stderr.
    fn a_refused_knock_ends_in_one_line_within_the_wait(&self) {
        let text = std::fs::read_to_string(&self.profile).expect("profile");
        let line = text
            .lines()
            .find(|l| l.starts_with("spa_key = "))
            .unwrap_or_else(|| panic!("no spa_key in the profile:\n{text}"));
        let wrong = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let stolen = self.work.path.join("wrong-key.toml");
        std::fs::write(
            &stolen,
            text.replace(line, &format!("spa_key = \"{wrong}\"")),
        )
        .expect("write");
        let rejected_before = self.gw1.events_named("spa.rejected").len();
        let started = Instant::now();
        let mut cmd = self.client().cmd(knockgate_tests::bin("knocker"));
        cmd.args(["proxy", "gw1", GW_NAME, "22", "--wait", "3", "--profile"])
            .arg(&stolen);
        let out = run_bounded(&mut cmd, SSH_LIMIT);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert_eq!(
            err.trim_end(),
            format!(
                "knocker: error: {GW_NAME}:22 ({}) accepted no connection within 3s of asking \
                 gateway gw1: connection timed out",
                self.gw()
            )
        );
        assert!(took < Duration::from_secs(6), "gave up after {took:?}");
        let rejected = self.gw1.events_named("spa.rejected").len() - rejected_before;
        assert!(
            rejected >= 1,
            "the gateway saw and refused the knocks:\n{}",
            self.gw1.log_text()
        );
        assert!(self.gw1.events_named("spa.accepted").is_empty());
    }

    /// Without the knock (and after the refused one) ssh cannot even connect.
    fn plain_ssh_times_out(&self) {
        let out = self.ssh("plain.conf", &self.gw().to_string());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(err.contains("timed out"), "a connect timeout: {err}");
    }

    /// `ssh gw1` through `knocker proxy`: in, and stdout holds the command's output alone.
    fn ssh_with_knocker_proxy_logs_in(&self) {
        let out = self.ssh("proxy.conf", "gw1");
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).as_ref()
            ),
            (Some(0), "knocked-in\n"),
            "stderr: {}\nagent:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.gw1.log_text()
        );
        assert!(out.stderr.is_empty(), "{out:?}");
        let accepted = self.gw1.events_named("spa.accepted");
        assert_eq!(
            accepted.len(),
            1,
            "one knock, accepted:\n{}",
            self.gw1.log_text()
        );
    }

    /// The grant is for the client's address: now the plain ssh gets in too. So the
    /// refusals above were the firewall's, not sshd's or the config's.
    fn the_grant_lets_plain_ssh_in_while_it_lasts(&self) {
        let out = self.ssh("plain.conf", &self.gw().to_string());
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).as_ref()
            ),
            (Some(0), "knocked-in\n"),
            "{out:?}"
        );
    }
}

/// A user key for the client and a host key for sshd, made with ssh-keygen.
struct SshKeys {
    dir: PathBuf,
    host: PathBuf,
    user: PathBuf,
}

impl SshKeys {
    fn new(dir: &Path) -> SshKeys {
        std::fs::create_dir_all(dir).expect("ssh dir");
        let keygen = |path: &Path| {
            sh(Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "kgt-proxy-test",
                    "-f",
                ])
                .arg(path));
        };
        let keys = SshKeys {
            dir: dir.to_path_buf(),
            host: dir.join("ssh_host_ed25519_key"),
            user: dir.join("id_ed25519"),
        };
        keygen(&keys.host);
        keygen(&keys.user);
        std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        keys
    }
}

/// `sshd -D -e` on tcp/22 in a namespace, with everything in the key dir: root may log
/// in with the user key only. Killed on drop, with the sessions it forked.
struct Sshd {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Sshd {
    fn start(ns: &Netns, keys: &SshKeys) -> Sshd {
        let dir = &keys.dir;
        let config = dir.join("sshd_config");
        let text = format!(
            "Port 22\nListenAddress 0.0.0.0\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
             StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowTcpForwarding no\n\
             X11Forwarding no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
            keys.host.display(),
            dir.join("sshd.pid").display(),
            dir.join("authorized_keys").display()
        );
        std::fs::write(&config, text).expect("sshd_config");
        // The privilege separation directory the ssh service would have made.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        // Without PAM, sshd refuses a locked account, and many hosts lock root (`!` in
        // /etc/shadow). `ip netns exec` mounts /etc/netns/NAME/shadow over /etc/shadow for
        // what runs in this namespace (removed with it): there root is merely passwordless.
        let etc = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&etc).expect("/etc/netns dir");
        std::fs::write(etc.join("shadow"), "root:*:19000:0:99999:7:::\n").expect("shadow");
        let log = dir.join("sshd.log");
        let child = ns
            .cmd("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("spawn sshd (package openssh-server)");
        Sshd {
            child,
            ns: ns.name.clone(),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Sessions are sshd processes of their own in the namespace.
        for pid in ns_pids(&self.ns) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sshd" {
                kill9(pid);
            }
        }
    }
}

/// Kills, on drop, every process left in a namespace where only the test's own commands
/// run (ssh and the `knocker proxy` it starts).
struct Reaper(String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in ns_pids(&self.0) {
            kill9(pid);
        }
    }
}

/// The processes in network namespace `ns` (`ip netns pids`).
fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output();
}

/// Runs `cmd` with no stdin and its output captured; kills it and fails after `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            kill9(pid);
            panic!("{cmd:?} still running after {limit:?}");
        }
    }
}

/// The first line a TCP service at `addr` sends, polled for up to 10 s (sshd may still
/// be starting). Call inside the client namespace.
fn banner(addr: SocketAddr) -> Option<String> {
    use std::io::BufRead as _;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            if std::io::BufReader::new(stream).read_line(&mut line).is_ok() && !line.is_empty() {
                return Some(line.trim_end().to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
