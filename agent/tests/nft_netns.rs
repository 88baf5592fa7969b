//! The nftables backend against the real kernel. Each test runs on its own thread inside a
//! fresh network namespace (`unshare(CLONE_NEWNET)` is per thread, and the namespace goes
//! away with the thread), so nothing leaks into the host. Needs root; fails without it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use knockgate_agent::capture;
use knockgate_agent::engine::Input;
use knockgate_agent::firewall::nft::NftFirewall;
use knockgate_agent::firewall::{Firewall, FirewallError, Held};
use knockgate_agent_core::grants::GrantLabel;
use knockgate_agent_core::ruleset::{
    Access, FlagFilter, GrantKey, KernelDoor, KnockStep, Proto, Ruleset,
};

/// Run `f` on a new thread inside a new, empty network namespace with `lo` up.
fn in_netns<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let handle = thread::spawn(move || {
        enter_new_netns();
        run(&["ip", "link", "set", "lo", "up"]);
        f()
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Move the calling thread into a new network namespace.
#[allow(unsafe_code)] // the one syscall std has no wrapper for
fn enter_new_netns() {
    // SAFETY: unshare only changes the calling thread's namespace membership; it takes no
    // pointers.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        panic!(
            "unshare(CLONE_NEWNET) failed: {err}. These tests need root (CAP_SYS_ADMIN and \
             CAP_NET_ADMIN); run them as root, as CI does"
        );
    }
}

/// Become `nobody` on the calling thread only, losing every capability.
#[allow(unsafe_code)] // std has no per-thread setresuid
fn drop_root_on_this_thread() {
    // SAFETY: the raw syscall, unlike libc's setresuid wrapper, changes only the calling
    // thread's ids (and with them its capabilities); it takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
    assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
}

/// Run a command in the current thread's namespace; panic if it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Load a ruleset with `nft -f -` in the current thread's namespace.
fn nft_load(ruleset: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ruleset.as_bytes())
        .expect("write ruleset");
    assert!(child.wait().expect("nft").success(), "nft -f failed");
}

/// `nft list table inet knockgate`, whitespace collapsed and element lists sorted.
fn listing() -> String {
    normalize(&run(&["nft", "list", "table", "inet", "knockgate"]))
}

/// `nft list set inet knockgate <set>`, normalized like `listing`.
fn list_set(set: &str) -> String {
    normalize(&run(&["nft", "list", "set", "inet", "knockgate", set]))
}

fn normalize(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut rest = flat.as_str();
    while let Some(start) = rest.find("elements = { ") {
        let body = &rest[start + "elements = { ".len()..];
        let end = body.find(" }").expect("unterminated element list");
        let mut elems: Vec<&str> = body[..end].split(", ").collect();
        elems.sort_unstable();
        out.push_str(&rest[..start]);
        out.push_str(&format!("elements = {{ {} }}", elems.join(", ")));
        rest = &body[end + 2..];
    }
    out.push_str(rest);
    out
}

fn port(proto: Proto, port: u16) -> Access {
    Access { proto, port }
}

fn ruleset(protected: &[Access], knocks: &[Access]) -> Ruleset {
    Ruleset {
        protected: protected.iter().copied().collect::<BTreeSet<_>>(),
        knock_ports: knocks.iter().copied().collect::<BTreeSet<_>>(),
        forwards: BTreeMap::new(),
        ..Ruleset::default()
    }
}

fn grant(addr: &str, proto: Proto, port: u16) -> GrantKey {
    GrantKey {
        addr: addr.parse().expect("test address"),
        proto,
        port,
    }
}

fn firewall_with(rs: &Ruleset) -> NftFirewall {
    let mut fw = NftFirewall::new().expect("netlink socket");
    fw.ensure_base(rs).expect("ensure_base");
    fw
}

fn held(fw: &mut NftFirewall, key: &GrantKey) -> Option<Held> {
    fw.list().expect("list").into_iter().find(|h| h.key == *key)
}

fn assert_remaining(h: Option<Held>, max: Duration, slack: Duration) {
    let h = h.expect("grant is held");
    assert!(
        h.remaining <= max && h.remaining + slack >= max,
        "remaining {:?}, expected within {slack:?} below {max:?}",
        h.remaining
    );
}

const EXPECTED: &str = "table inet knockgate {
    set protected { type inet_proto . inet_service elements = { tcp . 22 } }
    set knocks { type inet_proto . inet_service elements = { tcp . 7000, udp . 8000 } }
    set grants4 { type ipv4_addr . inet_proto . inet_service flags dynamic,timeout }
    set grants6 { type ipv6_addr . inet_proto . inet_service flags dynamic,timeout }
    map forwards4 { type inet_proto . inet_service : ipv4_addr . inet_service }
    map forwards6 { type inet_proto . inet_service : ipv6_addr . inet_service }
    set targets4 { type ipv4_addr . inet_proto . inet_service }
    set targets6 { type ipv6_addr . inet_proto . inet_service }
    set door_ports { type inet_proto . inet_service }
    set alive { type nf_proto flags timeout }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        meta l4proto . th dport @knocks drop
        ct state established,related accept
        meta l4proto . th dport @forwards4 drop
        meta l4proto . th dport @forwards6 drop
        meta l4proto . th dport @protected ip saddr . meta l4proto . th dport != @grants4 drop
        meta l4proto . th dport @protected ip6 saddr . meta l4proto . th dport != @grants6 drop
    }
    chain doors {
    }
}";

fn standard() -> Ruleset {
    ruleset(
        &[port(Proto::Tcp, 22)],
        &[port(Proto::Tcp, 7000), port(Proto::Udp, 8000)],
    )
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn ensure_base_creates_the_layout() {
    in_netns(|| {
        let _fw = firewall_with(&standard());
        assert_eq!(listing(), normalize(EXPECTED));
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn ensure_base_accepts_an_empty_ruleset() {
    in_netns(|| {
        let _fw = firewall_with(&Ruleset::default());
        let text = listing();
        assert!(
            text.contains("set protected { type inet_proto . inet_service }"),
            "{text}"
        );
        assert!(text.contains("@grants6 drop"), "{text}");
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn ensure_base_again_keeps_grants_and_replaces_ports() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let key = grant("10.0.0.1", Proto::Tcp, 22);
        fw.open(&key, Duration::from_secs(60), &GrantLabel::default())
            .expect("open");

        let second = ruleset(
            &[port(Proto::Tcp, 2222), port(Proto::Udp, 53)],
            &[port(Proto::Udp, 9000)],
        );
        // A fresh instance, as after an agent restart.
        let mut fw = firewall_with(&second);
        fw.ensure_base(&second).expect("ensure_base is idempotent");

        let text = listing();
        let protected = "type inet_proto . inet_service elements = { tcp . 2222, udp . 53 } }";
        assert!(
            text.contains(&format!("set protected {{ {protected}")),
            "{text}"
        );
        assert!(
            text.contains(
                "set knocks { type inet_proto . inet_service elements = { udp . 9000 } }"
            ),
            "{text}"
        );
        assert!(
            text.contains("10.0.0.1 . tcp . 22 timeout 1m expires"),
            "{text}"
        );
        assert_eq!(
            text.matches("drop").count(),
            5,
            "rules were duplicated: {text}"
        );
        assert_remaining(
            held(&mut fw, &key),
            Duration::from_secs(60),
            Duration::from_secs(5),
        );
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn ensure_base_rebuilds_a_foreign_layout_and_carries_grants_over() {
    in_netns(|| {
        // Same grant sets, but the chain hooks at another priority, which cannot be
        // changed in place. The stray chain shows that the table was rebuilt, not patched.
        nft_load(
            "table inet knockgate {
                set grants4 {
                    type ipv4_addr . inet_proto . inet_service; flags timeout;
                    elements = { 10.9.9.9 . tcp . 22 timeout 90s, 10.9.9.8 . udp . 53 timeout 80s }
                }
                set grants6 {
                    type ipv6_addr . inet_proto . inet_service; flags timeout;
                    elements = { 2001:db8::9 . tcp . 22 timeout 70s }
                }
                chain input { type filter hook input priority 0; policy accept; }
                chain stray { }
            }",
        );

        let mut fw = firewall_with(&standard());
        let text = listing();
        assert!(text.contains("priority filter - 10"), "{text}");
        assert!(!text.contains("stray"), "{text}");
        assert!(text.contains("@knocks drop"), "{text}");
        let slack = Duration::from_secs(5);
        for (key, timeout) in [
            (grant("10.9.9.9", Proto::Tcp, 22), 90),
            (grant("10.9.9.8", Proto::Udp, 53), 80),
            (grant("2001:db8::9", Proto::Tcp, 22), 70),
        ] {
            assert_remaining(held(&mut fw, &key), Duration::from_secs(timeout), slack);
        }
        assert_eq!(fw.list().expect("list").len(), 3);
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn open_v4_and_v6_then_list() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let v4 = grant("192.0.2.7", Proto::Tcp, 22);
        let v6 = grant("2001:db8::7", Proto::Udp, 53);
        fw.open(&v4, Duration::from_secs(30), &GrantLabel::default())
            .expect("open v4");
        fw.open(&v6, Duration::from_secs(45), &GrantLabel::default())
            .expect("open v6");

        let all = fw.list().expect("list");
        assert_eq!(all.len(), 2, "{all:?}");
        assert_remaining(
            held(&mut fw, &v4),
            Duration::from_secs(30),
            Duration::from_secs(2),
        );
        assert_remaining(
            held(&mut fw, &v6),
            Duration::from_secs(45),
            Duration::from_secs(2),
        );

        let g4 = list_set("grants4");
        assert!(
            g4.contains("elements = { 192.0.2.7 . tcp . 22 timeout 30s expires"),
            "{g4}"
        );
        let g6 = list_set("grants6");
        assert!(
            g6.contains("elements = { 2001:db8::7 . udp . 53 timeout 45s expires"),
            "{g6}"
        );
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn open_stores_v4_mapped_addresses_as_v4() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        fw.open(
            &grant("::ffff:192.0.2.8", Proto::Tcp, 22),
            Duration::from_secs(30),
            &GrantLabel::default(),
        )
        .expect("open");
        let key = grant("192.0.2.8", Proto::Tcp, 22);
        assert!(held(&mut fw, &key).is_some());
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn reopen_restarts_the_timeout() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let key = grant("192.0.2.9", Proto::Tcp, 22);
        fw.open(&key, Duration::from_secs(3), &GrantLabel::default())
            .expect("open");
        thread::sleep(Duration::from_millis(1500));
        fw.open(&key, Duration::from_secs(3), &GrantLabel::default())
            .expect("reopen, same timeout");
        assert_remaining(
            held(&mut fw, &key),
            Duration::from_secs(3),
            Duration::from_millis(500),
        );

        fw.open(&key, Duration::from_secs(120), &GrantLabel::default())
            .expect("reopen, longer");
        assert_remaining(
            held(&mut fw, &key),
            Duration::from_secs(120),
            Duration::from_secs(1),
        );
        fw.open(&key, Duration::from_secs(10), &GrantLabel::default())
            .expect("reopen, shorter");
        assert_remaining(
            held(&mut fw, &key),
            Duration::from_secs(10),
            Duration::from_secs(1),
        );
        assert_eq!(fw.list().expect("list").len(), 1);
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn close_removes_and_tolerates_absence() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let key = grant("2001:db8::9", Proto::Tcp, 22);
        fw.open(&key, Duration::from_secs(30), &GrantLabel::default())
            .expect("open");
        fw.close(&key).expect("close");
        assert!(fw.list().expect("list").is_empty());
        fw.close(&key).expect("closing an absent grant is fine");
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn grant_expires_by_itself() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let key = grant("192.0.2.10", Proto::Udp, 8000);
        fw.open(&key, Duration::from_secs(1), &GrantLabel::default())
            .expect("open");
        assert!(held(&mut fw, &key).is_some());
        thread::sleep(Duration::from_millis(1500));
        assert!(fw.list().expect("list").is_empty());
        // The expired element may linger until garbage collection; it must not get in the way.
        fw.open(&key, Duration::from_secs(30), &GrantLabel::default())
            .expect("open again");
        assert_remaining(
            held(&mut fw, &key),
            Duration::from_secs(30),
            Duration::from_secs(2),
        );
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn list_reads_a_dump_spanning_many_datagrams() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let keys: Vec<GrantKey> = (0..3000u32)
            .map(|i| GrantKey {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                proto: Proto::Tcp,
                port: 22,
            })
            .collect();
        for key in &keys {
            fw.open(key, Duration::from_secs(60), &GrantLabel::default())
                .expect("open");
        }
        let mut listed: Vec<GrantKey> = fw
            .list()
            .expect("list")
            .into_iter()
            .map(|h| h.key)
            .collect();
        listed.sort_unstable();
        assert_eq!(listed, keys);
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn remove_table_removes_the_table() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        fw.remove_table().expect("remove");
        let out = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("knockgate"));
        fw.remove_table().expect("remove without a table");
        assert!(fw.list().expect("list without a table").is_empty());
        fw.close(&grant("192.0.2.1", Proto::Tcp, 22))
            .expect("close without a table");
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn a_grant_keeps_its_label_in_the_kernel_and_nft_shows_it() {
    in_netns(|| {
        let mut fw = firewall_with(&standard());
        let key = grant("192.0.2.30", Proto::Tcp, 22);
        let label = GrantLabel {
            grant_ref: "5eed-1".into(),
            policy: "ssh".into(),
            user: Some("alice".into()),
        };
        fw.open(&key, Duration::from_secs(60), &label)
            .expect("open");
        let listed = fw.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].label.as_ref(), Some(&label));
        let set = list_set("grants4");
        assert!(
            set.contains("comment \"ref=5eed-1 user=alice policy=ssh\""),
            "{set}"
        );
        // A refresh keeps it; a rebuild of a foreign layout carries it over.
        fw.open(&key, Duration::from_secs(90), &label)
            .expect("refresh");
        assert_eq!(fw.list().expect("list")[0].label.as_ref(), Some(&label));
        // An operator's own comment is not a label.
        run(&[
            "nft",
            "add",
            "element",
            "inet",
            "knockgate",
            "grants4",
            "{ 192.0.2.31 . tcp . 22 timeout 60s comment \"by hand\" }",
        ]);
        let by_hand = fw
            .list()
            .expect("list")
            .into_iter()
            .find(|h| h.key == grant("192.0.2.31", Proto::Tcp, 22))
            .expect("listed");
        assert_eq!(by_hand.label, None);
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn intact_notices_every_way_the_table_can_be_damaged() {
    in_netns(|| {
        let rs = standard();
        let mut fw = firewall_with(&rs);
        fw.open(
            &grant("192.0.2.7", Proto::Tcp, 22),
            Duration::from_secs(60),
            &GrantLabel::default(),
        )
        .expect("open");
        assert!(fw.intact(&rs).expect("check"), "freshly installed");
        let damage: [&[&str]; 6] = [
            &["nft", "flush", "ruleset"],
            &["nft", "delete", "table", "inet", "knockgate"],
            &["nft", "flush", "chain", "inet", "knockgate", "input"],
            &["nft", "flush", "set", "inet", "knockgate", "protected"],
            &["nft", "flush", "set", "inet", "knockgate", "knocks"],
            &["nft", "add", "rule", "inet", "knockgate", "input", "accept"],
        ];
        for cmd in damage {
            run(cmd);
            assert!(!fw.intact(&rs).expect("check"), "after {cmd:?}");
            fw.ensure_base(&rs).expect("repair");
            assert!(fw.intact(&rs).expect("check"), "repaired after {cmd:?}");
        }
        // A grant set losing its elements leaves the base whole: the engine restores
        // the grants it knows from its own bookkeeping.
        run(&["nft", "flush", "set", "inet", "knockgate", "grants4"]);
        assert!(fw.intact(&rs).expect("check"));
        assert!(fw.list().expect("list").is_empty());
        // A different ruleset is not what is installed.
        let other = ruleset(&[port(Proto::Tcp, 22), port(Proto::Tcp, 443)], &[]);
        assert!(!fw.intact(&other).expect("check"));
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn watch_reports_changes_by_others_and_not_our_own() {
    use std::sync::mpsc;
    in_netns(|| {
        let rs = standard();
        let mut fw = firewall_with(&rs);
        let (tx, rx) = mpsc::channel();
        knockgate_agent::firewall::nft::watch(fw.port_id(), move || tx.send(()).is_ok())
            .expect("watch");
        fw.open(
            &grant("192.0.2.8", Proto::Tcp, 22),
            Duration::from_secs(60),
            &GrantLabel::default(),
        )
        .expect("open");
        fw.ensure_base(&rs).expect("again");
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "our own changes are not reported"
        );
        run(&["nft", "add", "table", "inet", "other"]);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "other tables are not ours"
        );
        run(&["nft", "flush", "set", "inet", "knockgate", "grants4"]);
        rx.recv_timeout(Duration::from_secs(2))
            .expect("a flushed grant set is reported");
        while rx.try_recv().is_ok() {}
        run(&["nft", "flush", "ruleset"]);
        rx.recv_timeout(Duration::from_secs(2))
            .expect("a flushed ruleset is reported");
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn without_cap_net_admin_errors_are_permission_errors() {
    in_netns(|| {
        drop_root_on_this_thread();
        let mut fw = NftFirewall::new().expect("a netlink socket needs no privilege");
        let err = fw.ensure_base(&standard()).expect_err("refused");
        assert!(matches!(err, FirewallError::Permission(_)), "{err:?}");
        let err = fw
            .open(
                &grant("192.0.2.1", Proto::Tcp, 22),
                Duration::from_secs(5),
                &GrantLabel::default(),
            )
            .expect_err("refused");
        assert!(matches!(err, FirewallError::Permission(_)), "{err:?}");
        assert!(matches!(fw.list(), Err(FirewallError::Permission(_))));
    });
}

/// Connect from `from` to `to`; the stream if the handshake completes within 300 ms.
fn connects(from: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let domain = socket2::Domain::for_address(to);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(from, 0).into())
        .expect("bind source");
    sock.connect_timeout(&to.into(), Duration::from_millis(300))
        .ok()?;
    Some(sock.into())
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn grants_open_and_close_a_protected_port() {
    in_netns(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let knock = TcpListener::bind("127.0.0.1:0").expect("listen");
        let knock_addr = knock.local_addr().expect("addr");
        let rs = ruleset(
            &[port(Proto::Tcp, addr.port())],
            &[port(Proto::Tcp, knock_addr.port())],
        );
        let mut fw = firewall_with(&rs);
        let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

        assert!(
            connects(client, addr).is_none(),
            "protected port reachable without a grant"
        );
        let key = GrantKey {
            addr: client,
            proto: Proto::Tcp,
            port: addr.port(),
        };
        fw.open(&key, Duration::from_secs(10), &GrantLabel::default())
            .expect("open");
        let mut session = connects(client, addr).expect("connect with a grant");
        let (mut served, _) = listener.accept().expect("accept");

        fw.close(&key).expect("close");
        assert!(
            connects(client, addr).is_none(),
            "new connection after close"
        );
        // The established session outlives its grant.
        session.write_all(b"ping").expect("write");
        let mut buf = [0u8; 4];
        served
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        served
            .read_exact(&mut buf)
            .expect("read on the established session");
        assert_eq!(&buf, b"ping");

        // Knock ports are dropped even for a source with a grant to them.
        let knock_key = GrantKey {
            addr: client,
            proto: Proto::Tcp,
            port: knock_addr.port(),
        };
        fw.open(&knock_key, Duration::from_secs(10), &GrantLabel::default())
            .expect("open");
        assert!(
            connects(client, knock_addr).is_none(),
            "knock port reachable"
        );
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn grants_work_over_ipv6() {
    in_netns(|| {
        let listener = TcpListener::bind("[::1]:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let mut fw = firewall_with(&ruleset(&[port(Proto::Tcp, addr.port())], &[]));
        let client = IpAddr::V6(Ipv6Addr::LOCALHOST);

        assert!(
            connects(client, addr).is_none(),
            "protected port reachable without a grant"
        );
        let key = GrantKey {
            addr: client,
            proto: Proto::Tcp,
            port: addr.port(),
        };
        fw.open(&key, Duration::from_secs(10), &GrantLabel::default())
            .expect("open");
        assert!(connects(client, addr).is_some(), "connect with a grant");
    });
}

// Forwarding: a grant on an outer port reaches a host behind the gateway (DNAT).

/// `standard()` plus two forwards, to an IPv4 and to an IPv6 host.
fn forwarding() -> Ruleset {
    let mut rs = standard();
    rs.protected
        .extend([port(Proto::Tcp, 2222), port(Proto::Udp, 5353)]);
    rs.forwards.insert(
        port(Proto::Tcp, 2222),
        "10.240.2.2:22".parse().expect("addr"),
    );
    rs.forwards.insert(
        port(Proto::Udp, 5353),
        "[fd00:4b47:2::2]:53".parse().expect("addr"),
    );
    rs
}

const EXPECTED_FORWARDING: &str = "table inet knockgate {
    set protected { type inet_proto . inet_service elements = { tcp . 22, tcp . 2222, udp . 5353 } }
    set knocks { type inet_proto . inet_service elements = { tcp . 7000, udp . 8000 } }
    set grants4 { type ipv4_addr . inet_proto . inet_service flags dynamic,timeout }
    set grants6 { type ipv6_addr . inet_proto . inet_service flags dynamic,timeout }
    map forwards4 { type inet_proto . inet_service : ipv4_addr . inet_service
        elements = { tcp . 2222 : 10.240.2.2 . 22 } }
    map forwards6 { type inet_proto . inet_service : ipv6_addr . inet_service
        elements = { udp . 5353 : fd00:4b47:2::2 . 53 } }
    set targets4 { type ipv4_addr . inet_proto . inet_service
        elements = { 10.240.2.2 . tcp . 22 } }
    set targets6 { type ipv6_addr . inet_proto . inet_service
        elements = { fd00:4b47:2::2 . udp . 53 } }
    set door_ports { type inet_proto . inet_service }
    set alive { type nf_proto flags timeout }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        meta l4proto . th dport @knocks drop
        ct state established,related accept
        meta l4proto . th dport @forwards4 drop
        meta l4proto . th dport @forwards6 drop
        meta l4proto . th dport @protected ip saddr . meta l4proto . th dport != @grants4 drop
        meta l4proto . th dport @protected ip6 saddr . meta l4proto . th dport != @grants6 drop
    }
    chain doors {
    }
    chain prerouting {
        type nat hook prerouting priority dstnat - 10; policy accept;
        ip saddr . meta l4proto . th dport @grants4 dnat ip to meta l4proto . th dport map @forwards4
        ip6 saddr . meta l4proto . th dport @grants6 dnat ip6 to meta l4proto . th dport map @forwards6
    }
    chain forward {
        type filter hook forward priority filter - 10; policy accept;
        ct state established,related accept
        ct status ! dnat ip daddr . meta l4proto . th dport @targets4 drop
        ct status ! dnat ip6 daddr . meta l4proto . th dport @targets6 drop
    }
}";

fn has_chain(name: &str) -> bool {
    listing().contains(&format!("chain {name} {{"))
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn ensure_base_with_forwards_adds_the_nat_and_forward_chains() {
    in_netns(|| {
        let rs = forwarding();
        let mut fw = firewall_with(&rs);
        assert_eq!(listing(), normalize(EXPECTED_FORWARDING));
        assert!(fw.intact(&rs).expect("check"));
        // What `nft list` prints, `nft -f` reads back (an operator's saved ruleset
        // reloads), and it is the table knockgate wants.
        let saved = run(&["nft", "list", "table", "inet", "knockgate"]);
        run(&["nft", "delete", "table", "inet", "knockgate"]);
        nft_load(&saved);
        assert_eq!(listing(), normalize(EXPECTED_FORWARDING));
        assert!(
            fw.intact(&rs).expect("check"),
            "reloaded from nft's listing"
        );
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn forward_grants_are_adopted_and_time_out_and_the_chains_follow_the_config() {
    in_netns(|| {
        let rs = forwarding();
        let mut fw = firewall_with(&rs);
        let key = grant("192.0.2.40", Proto::Tcp, 2222);
        let label = GrantLabel {
            grant_ref: "5eed-9".into(),
            policy: "inner-ssh".into(),
            user: None,
        };
        fw.open(&key, Duration::from_secs(3), &label).expect("open");
        assert!(
            list_set("grants4").contains("192.0.2.40 . tcp . 2222 timeout 3s expires"),
            "a forward grant is an ordinary grant element"
        );

        // A restarted agent adopts the table: the grant, its label and the maps stay.
        let mut fw = firewall_with(&rs);
        let adopted = held(&mut fw, &key).expect("kept");
        assert_eq!(adopted.label.as_ref(), Some(&label));
        assert!(adopted.remaining <= Duration::from_secs(3));
        assert_eq!(
            listing().matches("th dport map @forwards").count(),
            2,
            "{}",
            listing()
        );
        assert!(fw.intact(&rs).expect("check"));

        // A config without forwards removes the chains and empties the maps; grants stay.
        let plain = standard();
        fw.ensure_base(&plain).expect("no forwards");
        assert!(
            !has_chain("prerouting") && !has_chain("forward"),
            "{}",
            listing()
        );
        assert!(!listing().contains("10.240.2.2"), "{}", listing());
        assert!(fw.intact(&plain).expect("check"));
        assert!(!fw.intact(&rs).expect("check"), "the forwards are gone");
        assert!(held(&mut fw, &key).is_some());
        fw.ensure_base(&plain).expect("again, with nothing stale");

        // And back.
        fw.ensure_base(&rs).expect("forwards again");
        assert_eq!(
            without_grants4(&listing()),
            without_grants4(&normalize(EXPECTED_FORWARDING)),
        );
        assert!(fw.intact(&rs).expect("check"));

        // The kernel ends the grant on time, with nobody asking it to.
        thread::sleep(Duration::from_millis(3200));
        assert!(held(&mut fw, &key).is_none(), "{}", list_set("grants4"));
    });
}

/// A normalized listing without the `grants4` set, whose elements' times vary.
fn without_grants4(text: &str) -> String {
    match (text.find("set grants4 {"), text.find("set grants6 {")) {
        (Some(a), Some(b)) => format!("{}{}", &text[..a], &text[b..]),
        _ => text.to_string(),
    }
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn intact_notices_damage_to_the_forwarding_and_repairs_it() {
    in_netns(|| {
        let rs = forwarding();
        let mut fw = firewall_with(&rs);
        let damage: [&[&str]; 5] = [
            &["nft", "flush", "chain", "inet", "knockgate", "prerouting"],
            &["nft", "delete", "chain", "inet", "knockgate", "forward"],
            &["nft", "flush", "map", "inet", "knockgate", "forwards4"],
            &["nft", "flush", "set", "inet", "knockgate", "targets6"],
            &[
                "nft",
                "add",
                "rule",
                "inet",
                "knockgate",
                "forward",
                "accept",
            ],
        ];
        for cmd in damage {
            run(cmd);
            assert!(!fw.intact(&rs).expect("check"), "after {cmd:?}");
            fw.ensure_base(&rs).expect("repair");
            assert!(fw.intact(&rs).expect("check"), "repaired after {cmd:?}");
            assert_eq!(listing(), normalize(EXPECTED_FORWARDING), "after {cmd:?}");
        }
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn a_foreign_prerouting_chain_is_rebuilt_with_its_grants_carried_over() {
    in_netns(|| {
        // A nat chain at another priority cannot be changed in place.
        nft_load(
            "table inet knockgate {
                set grants4 {
                    type ipv4_addr . inet_proto . inet_service; flags timeout;
                    elements = { 10.9.9.9 . tcp . 2222 timeout 90s }
                }
                chain prerouting { type nat hook prerouting priority 0; policy accept; }
            }",
        );
        let rs = forwarding();
        let mut fw = firewall_with(&rs);
        assert!(listing().contains("priority dstnat - 10"), "{}", listing());
        assert_remaining(
            held(&mut fw, &grant("10.9.9.9", Proto::Tcp, 2222)),
            Duration::from_secs(90),
            Duration::from_secs(5),
        );
        assert!(fw.intact(&rs).expect("check"));
    });
}

// Kernel doors: fixed sequences the firewall matches itself (docs/KERNEL_SEQUENCES.md).

const GROUP: u16 = 4747;

fn door(max_sources: u32) -> KernelDoor {
    KernelDoor {
        policy: "ssh".into(),
        steps: vec![
            KnockStep::tcp(7000),
            KnockStep::udp(8000),
            KnockStep::tcp(9000),
        ],
        sequence_timeout: Duration::from_secs(2),
        stage_timeout: Duration::from_millis(300),
        tcp_flags: FlagFilter::DEFAULT,
        open: vec![port(Proto::Tcp, 22)],
        timeout: Duration::from_secs(30),
        max_sources,
    }
}

fn with_door(d: KernelDoor) -> Ruleset {
    let mut rs = standard();
    rs.knock_ports.extend(d.ports());
    rs.doors = vec![d];
    rs.nflog_group = GROUP;
    rs
}

/// One knock from `src` to the same family's loopback address: a TCP SYN (a
/// non-blocking connect, which the knock port drops) or a UDP datagram.
fn knock_from(src: IpAddr, step: KnockStep) {
    let dst: IpAddr = if src.is_ipv4() {
        Ipv4Addr::LOCALHOST.into()
    } else {
        Ipv6Addr::LOCALHOST.into()
    };
    let KnockStep::Port { proto, port } = step else {
        panic!("only port knocks here");
    };
    let domain = socket2::Domain::for_address(SocketAddr::new(src, 0));
    let (kind, protocol) = match proto {
        Proto::Tcp => (socket2::Type::STREAM, socket2::Protocol::TCP),
        Proto::Udp => (socket2::Type::DGRAM, socket2::Protocol::UDP),
    };
    let sock = socket2::Socket::new(domain, kind, Some(protocol)).expect("socket");
    sock.bind(&SocketAddr::new(src, 0).into()).expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let to = SocketAddr::new(dst, port).into();
    match proto {
        Proto::Tcp => {
            let _ = sock.connect(&to); // EINPROGRESS: the SYN is out
        }
        Proto::Udp => {
            sock.send_to(b"knock", &to).expect("send");
        }
    }
    // Let loopback deliver it before the next knock.
    thread::sleep(Duration::from_millis(5));
}

fn knock_all(src: &str, steps: &[u16]) {
    let src: IpAddr = src.parse().expect("source");
    for &p in steps {
        let step = if p == 8000 {
            KnockStep::udp(p)
        } else {
            KnockStep::tcp(p)
        };
        knock_from(src, step);
    }
}

/// Whether `src` holds a tcp/22 grant within 200 ms.
fn granted(fw: &mut NftFirewall, src: &str) -> bool {
    let key = grant(src, Proto::Tcp, 22);
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    loop {
        if held(fw, &key).is_some() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn a_kernel_door_matches_sequences_with_knockds_rules_and_reports_them_on_nflog() {
    in_netns(|| {
        // The agent's completion reader, on the group the door logs to.
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let nflog = capture::spawn(
            capture::open_nflog(GROUP).expect("open nflog"),
            tx,
            stop.clone(),
            std::sync::Arc::default(),
            capture::Tuning::new(String::new(), None),
        )
        .expect("nflog thread");
        let d = door(1000);
        let rs = with_door(d.clone());
        let mut fw = firewall_with(&rs);
        assert!(fw.intact(&rs).expect("check"));
        fw.keep_doors_alive(Duration::from_secs(30)).expect("alive");

        knock_all("127.0.0.2", &[7000, 8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.2"), "{}", listing());
        let Ok(Input::KernelCompleted { door, src, .. }) = rx.recv_timeout(Duration::from_secs(1))
        else {
            panic!("no completion on nflog");
        };
        assert_eq!(
            (door.as_str(), src),
            (d.id().as_str(), "127.0.0.2".parse().expect("ip"))
        );

        // A wrong knock on one of the door's ports starts over.
        knock_all("127.0.0.3", &[7000, 9000, 8000, 9000]);
        assert!(!granted(&mut fw, "127.0.0.3"));
        knock_all("127.0.0.3", &[7000, 8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.3"));

        // A repeated knock (a retransmitted SYN) changes nothing.
        knock_all("127.0.0.4", &[7000, 7000, 8000, 8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.4"));

        // More than the stage timeout (300 ms) between two knocks.
        knock_all("127.0.0.5", &[7000]);
        thread::sleep(Duration::from_millis(450));
        knock_all("127.0.0.5", &[8000, 9000]);
        assert!(!granted(&mut fw, "127.0.0.5"));

        // IPv6 has its own sets and opens in grants6.
        knock_all("::1", &[7000, 8000, 9000]);
        assert!(granted(&mut fw, "::1"));
        assert!(!granted(&mut fw, "127.0.0.1"));

        // Without an agent keeping the door alive it opens nothing.
        fw.keep_doors_alive(Duration::ZERO).expect("stop");
        knock_all("127.0.0.6", &[7000, 8000, 9000]);
        assert!(!granted(&mut fw, "127.0.0.6"));
        fw.keep_doors_alive(Duration::from_secs(30)).expect("alive");
        knock_all("127.0.0.6", &[7000, 8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.6"));

        // Every completion was reported, none of the failures.
        let mut reported = vec!["127.0.0.2".to_string()];
        while let Ok(Input::KernelCompleted { src, .. }) =
            rx.recv_timeout(Duration::from_millis(300))
        {
            reported.push(src.to_string());
        }
        assert_eq!(
            reported,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1", "127.0.0.6"]
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        nflog.stop();
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn a_flood_of_spoofed_sources_fills_a_stage_and_is_refused_keeping_progress_and_grants() {
    in_netns(|| {
        // Two sources per stage, and stages that outlast the flood.
        let d = KernelDoor {
            sequence_timeout: Duration::from_secs(10),
            stage_timeout: Duration::from_secs(5),
            ..door(2)
        };
        let rs = with_door(d);
        let mut fw = firewall_with(&rs);
        fw.keep_doors_alive(Duration::from_secs(30)).expect("alive");
        // A grant from before the flood; its places in the stages are collected.
        knock_all("127.0.0.9", &[7000, 8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.9"));
        thread::sleep(Duration::from_millis(1500));
        knock_all("127.0.0.2", &[7000]);
        knock_all("127.0.0.3", &[7000]);
        // The first stage holds two sources: a flood of first knocks from 200 other
        // (spoofed) addresses is refused, and so is a real third source.
        for i in 1..=200u8 {
            knock_from(IpAddr::from([127, 0, 1, i]), KnockStep::tcp(7000));
        }
        knock_all("127.0.0.4", &[7000, 8000, 9000]);
        assert!(!granted(&mut fw, "127.0.0.4"));
        // Nobody's progress was dropped, and no grant.
        knock_all("127.0.0.2", &[8000, 9000]);
        knock_all("127.0.0.3", &[8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.2") && granted(&mut fw, "127.0.0.3"));
        assert!(granted(&mut fw, "127.0.0.9"));
        // Room again once they are through and the kernel's garbage collection (every
        // second) has counted their elements out.
        thread::sleep(Duration::from_millis(1500));
        knock_all("127.0.0.4", &[7000, 8000, 9000]);
        assert!(granted(&mut fw, "127.0.0.4"));
    });
}

#[test]
#[ignore = "needs root: network namespaces and nftables (scripts/test.sh runs it)"]
fn door_chains_and_sets_follow_the_config_and_an_unchanged_door_keeps_its_progress() {
    in_netns(|| {
        let d = door(1000);
        let rs = with_door(d.clone());
        let mut fw = firewall_with(&rs);
        fw.keep_doors_alive(Duration::from_secs(30)).expect("alive");
        let text = listing();
        assert!(text.contains(&format!("chain {} {{", d.id())), "{text}");
        assert!(text.contains("meta l4proto . th dport @door_ports jump doors"));
        assert!(
            text.contains(&format!("log prefix \"{}\" group 4747", d.id())),
            "{text}"
        );
        // Progress survives a config that leaves the door as it was.
        knock_all("127.0.0.2", &[7000, 8000]);
        fw.ensure_base(&rs).expect("same config");
        assert!(fw.intact(&rs).expect("check"));
        knock_all("127.0.0.2", &[9000]);
        assert!(granted(&mut fw, "127.0.0.2"));
        // A changed door replaces the old one's chain and sets.
        let longer = KernelDoor {
            timeout: Duration::from_secs(60),
            ..d.clone()
        };
        let rs2 = with_door(longer.clone());
        fw.ensure_base(&rs2).expect("new door");
        let text = listing();
        assert!(!text.contains(&d.id()), "{text}");
        assert!(text.contains(&longer.id()));
        assert!(fw.intact(&rs2).expect("check"));
        assert!(!fw.intact(&rs).expect("check"));
        // No door at all: nothing of them is left.
        fw.ensure_base(&standard()).expect("no doors");
        let text = listing();
        assert!(
            !text.contains("kd_") && !text.contains("jump doors"),
            "{text}"
        );
        // Damage to a door is noticed and repaired.
        fw.ensure_base(&rs2).expect("door again");
        run(&["nft", "flush", "chain", "inet", "knockgate", &longer.id()]);
        assert!(!fw.intact(&rs2).expect("check"));
        fw.ensure_base(&rs2).expect("repair");
        assert!(fw.intact(&rs2).expect("check"));
    });
}
