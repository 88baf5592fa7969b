//! Test hosts: network namespaces joined by veth pairs, removed on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Run a command, panicking with its output if it fails (harness setup only).
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `kgt<pid>x<n><role>` with loopback up.
    pub fn new(role: &str) -> Netns {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("kgt{}x{n}{role}", std::process::id());
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        sh(ns.cmd("ip").args(["link", "set", "lo", "up"]));
        ns
    }

    /// A command that runs inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        crate::otel::apply(&mut c);
        c
    }

    /// Names that programs run with [`Netns::cmd`] resolve in this namespace: `ip netns
    /// exec` mounts `/etc/netns/NAME/hosts` over `/etc/hosts` (removed on drop). One
    /// `(address, name)` per line, in order: a name given twice has both addresses.
    pub fn hosts(&self, entries: &[(std::net::IpAddr, &str)]) {
        let dir = self.etc();
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (addr, name) in entries {
            text.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(dir.join("hosts"), text).expect("hosts file");
    }

    /// `/etc/netns/NAME`: files `ip netns exec` mounts over their `/etc` namesakes.
    fn etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// Run `f` on a fresh thread that has entered this namespace, and return its result.
    /// Sockets made there live in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Spawn a long-running thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep it alive; the guards that own them drop first.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// Move the calling thread into the network namespace at `path`.
#[allow(unsafe_code)]
pub fn enter(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd affects only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// A host on its own segment behind `router`: a new namespace joined to `router` by a veth
/// pair (`router_if` in `router`, `kgt0` inside), `router_addr` and `addr` (both
/// `A.B.C.D/LEN`) on either end, and the host's default route via `router_addr`, so its
/// replies go back through the router. The pair goes away with the namespace, on drop.
pub fn behind(router: &Netns, role: &str, router_if: &str, router_addr: &str, addr: &str) -> Netns {
    let host = Netns::new(role);
    sh(Command::new("ip").args([
        "link",
        "add",
        router_if,
        "netns",
        &router.name,
        "type",
        "veth",
        "peer",
        "name",
        "kgt0",
        "netns",
        &host.name,
    ]));
    for (ns, dev, a) in [(router, router_if, router_addr), (&host, "kgt0", addr)] {
        sh(ns.cmd("ip").args(["addr", "add", a, "dev", dev]));
        sh(ns.cmd("ip").args(["link", "set", dev, "up"]));
    }
    let via = router_addr.split('/').next().unwrap_or(router_addr);
    sh(host.cmd("ip").args(["route", "add", "default", "via", via]));
    host
}

/// A gateway and a client joined by one veth pair, IPv4 and IPv6.
///
/// gateway: 10.240.0.1/24, fd00:4b47::1/64 on `kgt0`;
/// client:  10.240.0.2 (+ .3, .4 as extra sources), fd00:4b47::2 (+ ::3) on `kgt1`.
pub struct Lab {
    pub client: Netns,
    pub gw: Netns,
}

impl Lab {
    pub const GW4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
    pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 2);
    pub const OTHER4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 3);
    pub const JUNK4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 4);
    pub const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4b47, 0, 0, 0, 0, 0, 1);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4b47, 0, 0, 0, 0, 0, 2);
    pub const OTHER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4b47, 0, 0, 0, 0, 0, 3);
    /// The gateway's capture interface.
    pub const GW_IFACE: &'static str = "kgt0";

    pub fn new() -> Lab {
        crate::require_root();
        let gw = Netns::new("g");
        let client = Netns::new("c");
        sh(Command::new("ip").args([
            "link",
            "add",
            "kgt0",
            "netns",
            &gw.name,
            "type",
            "veth",
            "peer",
            "name",
            "kgt1",
            "netns",
            &client.name,
        ]));
        let addrs: [(&Netns, &str, &[&str]); 2] = [
            (&gw, "kgt0", &["10.240.0.1/24", "fd00:4b47::1/64"]),
            (
                &client,
                "kgt1",
                &[
                    "10.240.0.2/24",
                    "10.240.0.3/24",
                    "10.240.0.4/24",
                    "fd00:4b47::2/64",
                    "fd00:4b47::3/64",
                ],
            ),
        ];
        for (ns, dev, list) in addrs {
            for a in list {
                let mut c = ns.cmd("ip");
                c.args(["addr", "add", a, "dev", dev]);
                if a.contains(':') {
                    c.arg("nodad");
                }
                if *a == "fd00:4b47::3/64" {
                    // Deprecated: usable as an explicit source, never picked by default.
                    c.args(["preferred_lft", "0"]);
                }
                sh(&mut c);
            }
            sh(ns.cmd("ip").args(["link", "set", dev, "up"]));
        }
        let lab = Lab { client, gw };
        lab.wait_link();
        lab
    }

    /// Wait until the client reaches the gateway over both families: a connect to a
    /// closed port is refused (RST) once neighbour discovery and the link are done.
    fn wait_link(&self) {
        for target in [IpAddr::V4(Self::GW4), IpAddr::V6(Self::GW6)] {
            let ok = self.client.run(move || {
                (0..100).any(|_| {
                    let r = std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::new(target, 1),
                        std::time::Duration::from_millis(100),
                    );
                    match r {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
                        _ => {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            false
                        }
                    }
                })
            });
            assert!(ok, "client cannot reach gateway at {target}");
        }
    }

    /// `nft list table inet knockgate` in the gateway, or None if there is no table.
    pub fn nft_table(&self) -> Option<String> {
        let out = self
            .gw
            .cmd("nft")
            .args(["list", "table", "inet", "knockgate"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}
