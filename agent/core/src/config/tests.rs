use super::*;
use crate::packet::tcp_flags;
use std::path::Path;
use std::time::Duration;

const ISSUE_EXAMPLE: &str = r#"
[agent]
name = "gw1"
interfaces = ["eth0"]          # capture here; several allowed
state_dir = "/var/lib/knockgate"   # what must survive a restart

[firewall]
backend = "nftables"           # "nftables" (default) or "command"

[[policy]]
name = "ssh"
open = ["tcp/22"]              # protected: closed to everyone not granted
timeout = "30s"                # grant lifetime
sequence = ["tcp/7000", "udp/8000", "icmp", "tcp/9000"]
sequence_timeout = "10s"       # whole sequence within this
# optional: min_gap = "0s", max_gap = "5s", tcp_flags = "syn,!ack"
"#;

fn err(text: &str) -> String {
    Config::parse(text).expect_err("should fail").to_string()
}

#[test]
fn the_issue_schema_is_accepted_as_written() {
    let c = Config::parse(ISSUE_EXAMPLE).expect("parses");
    assert_eq!(c.agent.name, "gw1");
    assert_eq!(c.agent.interfaces, ["eth0"]);
    assert_eq!(c.agent.max_sources, DEFAULT_MAX_SOURCES);
    assert_eq!(c.firewall.backend, Backend::Nftables);
    let p = &c.policies[0];
    let door = p.door.as_ref().expect("door");
    assert_eq!(p.open, ["tcp/22".parse().unwrap()]);
    assert_eq!(p.timeout, Duration::from_secs(30));
    assert_eq!(door.steps.len(), 4);
    assert_eq!(door.steps[2], KnockStep::Icmp);
    assert_eq!(door.sequence_timeout, Duration::from_secs(10));
    assert_eq!(door.tcp_flags, DEFAULT_TCP_FLAGS);
    let rs = c.ruleset();
    assert_eq!(rs.protected.len(), 1);
    assert_eq!(rs.knock_ports.len(), 3, "icmp is not a port");
}

#[test]
fn state_dir_defaults_to_the_units_state_directory() {
    let text = ISSUE_EXAMPLE.replace("state_dir = \"/var/lib/knockgate\"", "");
    assert!(!text.contains("state_dir"));
    let c = Config::parse(&text).expect("parses without state_dir");
    assert_eq!(c.agent.state_dir, Path::new(DEFAULT_STATE_DIR));
    assert_eq!(DEFAULT_STATE_DIR, "/var/lib/knockgate");
}

#[test]
fn optional_keys_parse() {
    let text = ISSUE_EXAMPLE.replace(
        "# optional: min_gap = \"0s\", max_gap = \"5s\", tcp_flags = \"syn,!ack\"",
        "min_gap = \"100ms\"\nmax_gap = \"5s\"\ntcp_flags = \"syn,!ack,!rst\"",
    );
    let c = Config::parse(&text).expect("parses");
    let d = c.policies[0].door.as_ref().expect("door");
    assert_eq!(d.min_gap, Duration::from_millis(100));
    assert_eq!(d.max_gap, Some(Duration::from_secs(5)));
    assert_eq!(
        d.tcp_flags,
        FlagFilter {
            set: tcp_flags::SYN,
            clear: tcp_flags::ACK | tcp_flags::RST
        }
    );
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = err(&ISSUE_EXAMPLE.replace("timeout = \"30s\"", "timeout = \"30s\"\ntimout = \"5s\""));
    assert!(e.contains("timout") && e.contains("line"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn absurd_durations_are_refused() {
    let e = err(&ISSUE_EXAMPLE.replace("\"30s\"", "\"3000000h\""));
    assert!(
        e.contains("longer than the limit of 30 days") && e.contains("line 13"),
        "{e}"
    );
    assert!(Config::parse(&ISSUE_EXAMPLE.replace("\"30s\"", "\"30days\"")).is_ok());
}

#[test]
fn bad_values_are_named() {
    let e = err(&ISSUE_EXAMPLE.replace("\"30s\"", "\"30 parsecs\""));
    assert!(
        e.contains("bad duration") && e.contains("line 13") && e.contains("timeout ="),
        "{e}"
    );
    let e = err(&ISSUE_EXAMPLE.replace("\"tcp/22\"", "\"tcp/99999\""));
    assert!(
        e.contains("port is not a number") && e.contains("line 12") && e.contains("open ="),
        "{e}"
    );
    let e = err(&ISSUE_EXAMPLE.replace("\"udp/8000\"", "\"sctp/8000\""));
    assert!(
        e.contains("unknown protocol") && e.contains("line 14"),
        "{e}"
    );
    let e = err(&ISSUE_EXAMPLE.replace("\"icmp\"", "\"icmp6\""));
    assert!(
        e.contains("unknown protocol 'icmp6' (expected tcp/PORT, udp/PORT or icmp)"),
        "{e}"
    );
    let e = err(&ISSUE_EXAMPLE.replace("# optional: min_gap", "tcp_flags = \"syn,!bogus\"\n#"));
    assert!(
        e.contains("unknown tcp flag \\\"bogus\\\"") || e.contains("unknown tcp flag"),
        "{e}"
    );
}

#[test]
fn semantic_errors_name_the_key() {
    assert_eq!(
        err(&ISSUE_EXAMPLE.replace("[\"eth0\"]", "[]")),
        "agent.interfaces: name at least one interface to capture on"
    );
    assert_eq!(
        err(&ISSUE_EXAMPLE.replace("\"30s\"", "\"0s\"")),
        "policy[0].timeout: must be longer than zero"
    );
    let e = err(&ISSUE_EXAMPLE.replace("\"tcp/9000\"]", "\"tcp/22\"]"));
    assert_eq!(e, "policy[0].sequence: tcp/22 is also a protected port");
    let e = err(&ISSUE_EXAMPLE.replace("backend = \"nftables\"", "backend = \"command\""));
    assert_eq!(
        e,
        "firewall.open_command: required when backend = \"command\""
    );
    let e = err(&ISSUE_EXAMPLE.replace(
        "# optional: min_gap = \"0s\", max_gap = \"5s\"",
        "min_gap = \"2s\"\nmax_gap = \"1s\"\n#",
    ));
    assert_eq!(e, "policy[0].max_gap: is shorter than min_gap");
    let dup = format!(
        "{ISSUE_EXAMPLE}\n[[policy]]\nname = \"ssh\"\nopen = [\"tcp/23\"]\ntimeout = \"5s\"\nsequence = [\"udp/1\"]\n"
    );
    assert_eq!(err(&dup), "policy[1].name: duplicate policy name \"ssh\"");
}

#[test]
fn a_missing_section_or_bad_backend_is_an_error() {
    assert!(err("[firewall]\nbackend = \"nftables\"\n").contains("agent"));
    let e = err(&ISSUE_EXAMPLE.replace("backend = \"nftables\"", "backend = \"iptables\""));
    assert!(e.contains("iptables") && e.contains("line"), "{e}");
}

#[test]
fn command_backend_parses() {
    let text = ISSUE_EXAMPLE.replace(
        "backend = \"nftables\"",
        "backend = \"command\"\nopen_command = \"/bin/true %IP%\"\nclose_command = \"/bin/true %IP%\"",
    );
    let c = Config::parse(&text).expect("parses");
    assert_eq!(c.firewall.backend, Backend::Command);
    assert_eq!(c.firewall.open_command.as_deref(), Some("/bin/true %IP%"));
}

proptest::proptest! {
    #[test]
    fn never_panics_on_any_text(s in "\\PC{0,200}") {
        let _ = Config::parse(&s);
    }
}

const SPA_EXAMPLE: &str = r#"
[agent]
name = "gw1"
interfaces = ["eth0"]
state_dir = "/var/lib/knockgate"

[spa]
port = 62201                    # UDP port SPA datagrams are captured on (pcap, like fwknopd)
max_age = "120s"                # older or future-dated packets are refused

[[user]]
name = "alice"
spa_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
fwknop_key = "wBtb3bHHJGV3gdeuR9C5rTBvRvqMtZQwRsGebvm3pQo="
fwknop_hmac_key = "a6v/eJvr/8hNW2tY9aRmn7PEyJqdK9UNEXqKeErHuOgqMXVWtEiNkzlgfxWqnZwOtdwySvzCGQnWYn6cp6E0GA=="
fwknop_hmac = "sha256"                      # default; also sha1, sha384, sha512

[[policy]]
name = "ssh-spa"
open = ["tcp/22"]
timeout = "30s"
max_timeout = "5m"              # a client may ask for up to this
users = ["alice"]
spa = true                      # native SPA opens it
fwknop = true                   # fwknop SPA opens it
"#;

#[test]
fn the_spa_schema_is_accepted_as_written() {
    let c = Config::parse(SPA_EXAMPLE).expect("parses");
    assert_eq!(c.spa.port, 62201);
    assert_eq!(c.spa.max_age, Duration::from_secs(120));
    let u = &c.users[0];
    assert_eq!(u.name, "alice");
    assert!(u.spa_key.is_some());
    let fw = u.fwknop.as_ref().expect("fwknop keys");
    assert_eq!(fw.enc_key.len(), 32);
    assert_eq!(fw.hmac_key.len(), 64);
    let p = &c.policies[0];
    assert!(p.door.is_none() && p.spa && p.fwknop);
    assert_eq!(p.max_timeout, Duration::from_secs(300));
    assert_eq!(p.users.iter().copied().collect::<Vec<_>>(), [0]);
    let rs = c.ruleset();
    assert!(
        rs.knock_ports.contains(&"udp/62201".parse().unwrap()),
        "the SPA port is dropped"
    );
    assert!(c.capture_kinds().contains(&KnockStep::Port {
        proto: crate::ruleset::Proto::Udp,
        port: 62201
    }));
}

#[test]
fn spa_errors_name_the_key_and_never_echo_secrets() {
    let e = err(&SPA_EXAMPLE.replace(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd",
    ));
    assert!(
        e.contains("bad spa_key") && e.contains("line 13") && !e.contains("AAECAw"),
        "{e}"
    );
    let e = err(&SPA_EXAMPLE.replace("users = [\"alice\"]", "users = [\"bob\"]"));
    assert_eq!(e, "policy[0].users[0]: no [[user]] named \"bob\"");
    let e = err(&SPA_EXAMPLE.replace("users = [\"alice\"]", "users = []"));
    assert_eq!(
        e,
        "policy[0].users: spa, fwknop and sealed policies must name the users they admit"
    );
    let e = err(&SPA_EXAMPLE.replace("max_timeout = \"5m\"", "max_timeout = \"5s\""));
    assert_eq!(e, "policy[0].max_timeout: is shorter than timeout");
    let e = err(&SPA_EXAMPLE.replace("fwknop_hmac = \"sha256\"", "fwknop_hmac = \"md4\""));
    assert!(
        e.contains("unknown fwknop_hmac") && e.contains("line 16"),
        "{e}"
    );
    let e = err(&SPA_EXAMPLE.replace("fwknop_hmac_key = ", "# fwknop_hmac_key = "));
    assert!(e.starts_with("user[0].fwknop_hmac_key: required"), "{e}");
    let e = err(&SPA_EXAMPLE.replace("open = [\"tcp/22\"]", "open = [\"udp/62201\"]"));
    assert_eq!(e, "policy[0].open: udp/62201 is the SPA port");
    let e = err(&SPA_EXAMPLE
        .replace("spa = true ", "spa = false ")
        .replace("fwknop = true ", "fwknop = false "));
    assert!(
        e.starts_with("policy[0].sequence: give a knock sequence"),
        "{e}"
    );
}

const CONTROLLED: &str = r#"
[agent]
name = "gw1"
interfaces = ["eth0"]
state_dir = "/var/lib/knockgate"

[controller]
url = "https://controller.example:7443"
reconnect_max = "1m"
"#;

#[test]
fn a_controller_section_needs_no_policies() {
    let c = Config::parse(CONTROLLED).expect("parses");
    let ctl = c.controller.as_ref().expect("controller");
    assert_eq!(ctl.urls, ["https://controller.example:7443"]);
    assert_eq!(ctl.reconnect_max, Duration::from_secs(60));
    assert!(c.policies.is_empty() && c.users.is_empty());
    let c = Config::parse(&CONTROLLED.replace("reconnect_max = \"1m\"\n", "")).expect("parses");
    assert_eq!(
        c.controller.expect("controller").reconnect_max,
        DEFAULT_RECONNECT_MAX
    );
    assert_eq!(
        err(&CONTROLLED.replace("https://", "http://")),
        "controller.url: must start with https://"
    );
    assert_eq!(
        err(&CONTROLLED.replace("controller.example:7443", ":7443")),
        "controller.url: names no host"
    );
    assert_eq!(
        err(&CONTROLLED.replace("\"1m\"", "\"10ms\"")),
        "controller.reconnect_max: must be at least 200ms"
    );
    assert!(err(&CONTROLLED.replace("reconnect_max", "retry")).contains("retry"));
}

#[test]
fn several_controller_replicas_are_listed_in_order() {
    let urls = |list: &str| {
        CONTROLLED.replace(
            "url = \"https://controller.example:7443\"",
            &format!("url = {list}"),
        )
    };
    let c = Config::parse(&urls(
        r#"["https://a.example:7443", "https://[fd00:4b47::2]:7443"]"#,
    ))
    .expect("parses");
    assert_eq!(
        c.controller.expect("controller").urls,
        ["https://a.example:7443", "https://[fd00:4b47::2]:7443"]
    );
    assert_eq!(err(&urls("[]")), "controller.url: names no controller");
    assert_eq!(
        err(&urls(
            r#"["https://a.example:7443", "http://b.example:7443"]"#
        )),
        "controller.url[1]: must start with https://"
    );
    assert_eq!(
        err(&urls(
            r#"["https://a.example:7443", "https://a.example:7443"]"#
        )),
        "controller.url[1]: is listed twice"
    );
    assert!(err(&urls("7443")).contains("a URL or a list of URLs"));
}

fn def(name: &str) -> PolicyDef {
    PolicyDef {
        name: name.into(),
        open: vec!["tcp/22".parse().expect("access")],
        timeout: Duration::from_secs(30),
        max_timeout: None,
        sequence: vec![
            "tcp/7000".parse::<KnockStep>().expect("knock"),
            KnockStep::Icmp,
        ],
        sequence_timeout: None,
        min_gap: None,
        max_gap: None,
        tcp_flags: None,
        users: vec![],
        spa: false,
        fwknop: false,
        rotating: false,
        window_secs: None,
        otk: None,
        sealed: false,
        require_os: vec![],
        forward: vec![],
    }
}

#[test]
fn policies_from_another_source_get_the_same_validation() {
    let base = Config::parse(CONTROLLED).expect("parses");
    let alice = User {
        name: "alice".into(),
        spa_key: Some(SpaKey::from_secret([7; 32])),
        fwknop: None,
    };
    let mut spa = def("web");
    spa.open = vec!["tcp/443".parse().expect("access")];
    spa.sequence.clear();
    spa.spa = true;
    spa.users = vec!["alice".into()];
    let c = base
        .with_policies(
            Origin::Controller,
            vec![alice.clone()],
            vec![def("ssh"), spa.clone()],
        )
        .expect("valid");
    assert_eq!(
        c.controller, base.controller,
        "the file's sections are kept"
    );
    assert_eq!(c.policies.len(), 2);
    let door = c.policies[0].door.as_ref().expect("door");
    assert_eq!(door.sequence_timeout, DEFAULT_SEQUENCE_TIMEOUT);
    assert_eq!(door.tcp_flags, DEFAULT_TCP_FLAGS);
    assert_eq!(c.policies[1].max_timeout, Duration::from_secs(30));
    assert_eq!(c.spa_port(), Some(DEFAULT_SPA_PORT));

    let e = base
        .with_policies(Origin::Controller, vec![], vec![spa.clone()])
        .expect_err("unknown user");
    assert_eq!(
        e.to_string(),
        "policy[0].users[0]: no [[user]] named \"alice\""
    );
    let e = base
        .with_policies(
            Origin::Controller,
            vec![alice.clone(), alice.clone()],
            vec![],
        )
        .expect_err("dup");
    assert_eq!(e.to_string(), "user[1].name: duplicate user \"alice\"");
    let e = base
        .with_policies(Origin::Controller, vec![], vec![def("ssh"), def("ssh")])
        .expect_err("dup");
    assert_eq!(
        e.to_string(),
        "policy[1].name: duplicate policy name \"ssh\""
    );
    let mut bad = def("ssh");
    bad.open.push(Access {
        proto: Proto::Tcp,
        port: 7000,
    });
    let e = base
        .with_policies(Origin::Controller, vec![], vec![bad])
        .expect_err("overlap");
    assert_eq!(
        e.to_string(),
        "policy[0].sequence: tcp/7000 is also a protected port"
    );
    let mut bad = def("ssh");
    bad.open[0].port = 0;
    let e = base
        .with_policies(Origin::Controller, vec![], vec![bad])
        .expect_err("port 0");
    assert_eq!(e.to_string(), "policy[0].open: tcp/0: port must be 1-65535");
    let mut bad = def("ssh");
    bad.sequence.clear();
    bad.sequence_timeout = Some(Duration::from_secs(3));
    let e = base
        .with_policies(Origin::Controller, vec![], vec![bad])
        .expect_err("no sequence");
    assert!(e.to_string().starts_with("policy[0].sequence: give"), "{e}");
}

#[test]
fn the_controller_may_send_spa_policies_without_users_and_sequence_policies_with_them() {
    let base = Config::parse(CONTROLLED).expect("parses");
    let mut nobody = def("web");
    nobody.sequence.clear();
    nobody.spa = true;
    let mut named = def("ssh");
    named.users = vec!["carol".into()];
    let c = base
        .with_policies(
            Origin::Controller,
            vec![],
            vec![nobody.clone(), named.clone()],
        )
        .expect("valid from the controller");
    assert!(c.policies[0].users.is_empty(), "admits nobody");
    assert!(
        c.policies[1].users.is_empty(),
        "sequence knocks are anonymous"
    );
    let e = base
        .with_policies(Origin::File, vec![], vec![nobody])
        .expect_err("not in a file");
    assert_eq!(
        e.to_string(),
        "policy[0].users: spa, fwknop and sealed policies must name the users they admit"
    );
    let e = base
        .with_policies(Origin::File, vec![], vec![named])
        .expect_err("not in a file");
    assert_eq!(
        e.to_string(),
        "policy[0].users: users only apply with spa, fwknop or sealed = true"
    );
}

#[test]
fn sealed_policies_capture_their_range_and_refuse_overlaps() {
    let sealed = SPA_EXAMPLE
        .replace("fwknop = true ", "sealed = true ")
        .replace("spa = true ", "spa = false ");
    let c = Config::parse(&sealed).expect("parses");
    assert!(c.policies[0].sealed && !c.policies[0].spa);
    assert!(
        c.uses_spa_detector() && !c.uses_spa(),
        "no SPA port to capture"
    );
    assert_eq!(c.sealed_ports(), Some(20000..=28447));
    assert_eq!(
        c.capture_filter(&[]),
        "((tcp or udp) and dst portrange 20000-28447)"
    );
    let moved = sealed.replace(
        "max_age = \"120s\"",
        "max_age = \"120s\"\nsealed_base_port = 40000",
    );
    assert_eq!(
        Config::parse(&moved).expect("parses").sealed_ports(),
        Some(40000..=48447)
    );
    let e = err(&sealed.replace(
        "max_age = \"120s\"",
        "max_age = \"120s\"\nsealed_base_port = 60000",
    ));
    assert_eq!(
        e,
        "spa.sealed_base_port: must be 1-57088: the range is 8448 ports"
    );
    let e = err(&sealed.replace("open = [\"tcp/22\"]", "open = [\"tcp/22\", \"tcp/20022\"]"));
    assert_eq!(
        e,
        "policy[0].open: tcp/20022 is in the sealed knock range 20000-28447"
    );
    // The sealed key is the user's SPA key: a user without one cannot be admitted.
    let e = err(&sealed.replace(
        "spa_key = \"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"\n",
        "",
    ));
    assert!(e.contains("spa_key for spa and sealed"), "{e}");
}

#[test]
fn require_os_needs_a_tcp_knock_and_says_where() {
    let base = "[agent]\nname = \"gw1\"\ninterfaces = [\"eth0\"]\n\n[[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\ntimeout = \"30s\"\n";
    let ok = format!("{base}sequence = [\"udp/7000\", \"tcp/8000\"]\nrequire_os = [\"Linux\"]\n");
    let c = Config::parse(&ok).expect("parses");
    assert_eq!(c.policies[0].require_os, ["Linux"]);
    assert!(c.fingerprints());
    assert_eq!(c.agent.p0f_db, std::path::Path::new("/etc/p0f/p0f.fp"));
    let udp_only = format!("{base}sequence = [\"udp/7000\", \"icmp\"]\nrequire_os = [\"Linux\"]\n");
    assert_eq!(
        err(&udp_only),
        "policy[0].require_os: line 10: needs a TCP knock in the sequence: the OS is read from the knocks' TCP SYNs"
    );
    let blank = format!("{base}sequence = [\"tcp/7000\"]\nrequire_os = [\"\"]\n");
    assert!(err(&blank).starts_with("policy[0].require_os[0]: expected an OS name"));
    let none = format!("{base}sequence = [\"tcp/7000\"]\n");
    assert!(!Config::parse(&none).expect("parses").fingerprints());
}

#[test]
fn each_fixed_sequence_takes_the_kernel_path_unless_it_cannot() {
    let path = |extra: &str, agent: &str| {
        let text = ISSUE_EXAMPLE
            .replace("# optional: min_gap", &format!("{extra}\n#"))
            .replace("state_dir =", &format!("{agent}\nstate_dir ="));
        let c = Config::parse(&text).expect("parses");
        c.sequence_path(&c.policies[0]).expect("a sequence")
    };
    assert_eq!(path("", ""), SequencePath::Kernel);
    // max_gap and tcp_flags are set timeouts and rule matches.
    assert_eq!(
        path("max_gap = \"2s\"\ntcp_flags = \"syn,!ack,!rst\"", ""),
        SequencePath::Kernel
    );
    let why = |extra, agent| match path(extra, agent) {
        SequencePath::Userspace(why) => why,
        SequencePath::Kernel => panic!("{extra} {agent}: kernel path"),
    };
    assert!(why("min_gap = \"100ms\"", "").contains("min_gap"));
    assert!(why("", "sequence_matching = \"userspace\"").contains("userspace"));
    let c = Config::parse(ISSUE_EXAMPLE).expect("parses");
    let door = &c.kernel_doors()[0];
    assert_eq!(
        door.stage_timeout,
        Duration::from_secs(10),
        "no max_gap: the whole timeout"
    );
    assert_eq!(door.id().len(), "kd_".len() + 8);
    assert_eq!(c.doors().len(), 0, "the agent's matcher has nothing to do");
    let c = c.userspace_sequences();
    assert!(c.kernel_doors().is_empty());
    assert_eq!(c.doors().len(), 1);
    let e = err(&ISSUE_EXAMPLE.replace("state_dir =", "sequence_matching = \"ebpf\"\nstate_dir ="));
    assert!(
        e.contains("sequence_matching") && e.contains("unknown variant"),
        "{e}"
    );
}
