use super::*;

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
    assert_eq!(p.open, ["tcp/22".parse().unwrap()]);
    assert_eq!(p.timeout, Duration::from_secs(30));
    assert_eq!(p.door.steps.len(), 4);
    assert_eq!(p.door.steps[2], KnockKind::Icmp);
    assert_eq!(p.door.sequence_timeout, Duration::from_secs(10));
    assert_eq!(p.door.tcp_flags, DEFAULT_TCP_FLAGS);
    let rs = c.ruleset();
    assert_eq!(rs.protected.len(), 1);
    assert_eq!(rs.knock_ports.len(), 3, "icmp is not a port");
}

#[test]
fn optional_keys_parse() {
    let text = ISSUE_EXAMPLE.replace(
        "# optional: min_gap = \"0s\", max_gap = \"5s\", tcp_flags = \"syn,!ack\"",
        "min_gap = \"100ms\"\nmax_gap = \"5s\"\ntcp_flags = \"syn,!ack,!rst\"",
    );
    let c = Config::parse(&text).expect("parses");
    let d = &c.policies[0].door;
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
    assert!(e.contains("write tcp/PORT, udp/PORT or icmp"), "{e}");
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
