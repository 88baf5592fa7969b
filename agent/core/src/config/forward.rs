//! Forwards: `forward = "tcp/2222 -> 10.0.0.5:22"` (one, or a list) in a `[[policy]]`, or
//! the controller's `Policy.forward`. A grant on the outer port reaches the inner host
//! (DNAT), so the outer port is opened like any `open` port and joins the policy's
//! `open`. Here: how the file writes them, what one policy may forward, and what the
//! policies together may (one target per outer port, never also served by the gateway).

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::raw::{ParseSpec, Spec};
use super::{Backend, Config, ConfigError, PolicyDef, invalid};
use crate::ruleset::{Access, Forward};

/// The file's `forward` key: one forward as a string, or a list of them.
#[derive(Debug, Default)]
pub(super) struct Forwards(pub Vec<Forward>);

impl ParseSpec for Forward {
    fn parse_spec(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e| format!("bad forward {s:?}: {e}"))
    }
}

impl<'de> Deserialize<'de> for Forwards {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrList;
        impl<'de> Visitor<'de> for OneOrList {
            type Value = Forwards;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a forward \"PROTO/PORT -> ADDR:PORT\" or a list of them")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Forwards, E> {
                Forward::parse_spec(s)
                    .map(|f| Forwards(vec![f]))
                    .map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Forwards, A::Error> {
                let mut out = Vec::new();
                while let Some(Spec(f)) = seq.next_element::<Spec<Forward>>()? {
                    out.push(f);
                }
                Ok(Forwards(out))
            }
        }
        d.deserialize_any(OneOrList)
    }
}

/// One policy's forwards checked, and its `open` with their outer ports added (a port
/// both listed in `open` and forwarded is forwarded).
pub(super) fn policy(
    p: &PolicyDef,
    key: &dyn Fn(&str) -> String,
) -> Result<(Vec<Access>, Vec<Forward>), ConfigError> {
    let mut open = p.open.clone();
    for (j, f) in p.forward.iter().enumerate() {
        if p.forward[..j].iter().any(|g| g.outer == f.outer) {
            return Err(invalid(
                key(&format!("forward[{j}]")),
                format!("{} is forwarded twice", f.outer),
            ));
        }
        if !open.contains(&f.outer) {
            open.push(f.outer);
        }
    }
    Ok((open, p.forward.clone()))
}

impl Config {
    /// Across policies: an outer port leads to one target, and a port one policy forwards
    /// is not one another policy opens on the gateway itself (a grant cannot mean both).
    /// Only the nftables backend can forward.
    pub(super) fn check_forwards(&self) -> Result<(), ConfigError> {
        for (i, p) in self.policies.iter().enumerate() {
            if !p.forward.is_empty() && self.firewall.backend != Backend::Nftables {
                return Err(invalid(
                    format!("policy[{i}].forward"),
                    "needs firewall.backend = \"nftables\" (the command backend cannot forward)",
                ));
            }
            for (j, f) in p.forward.iter().enumerate() {
                let key = || format!("policy[{i}].forward[{j}]");
                for q in &self.policies {
                    match q.forward.iter().find(|g| g.outer == f.outer) {
                        Some(g) if g.to != f.to => {
                            return Err(invalid(
                                key(),
                                format!(
                                    "{} is forwarded to {} by policy {:?}",
                                    f.outer, g.to, q.name
                                ),
                            ));
                        }
                        None if q.open.contains(&f.outer) => {
                            return Err(invalid(
                                key(),
                                format!(
                                    "{} is opened on the gateway itself by policy {:?}",
                                    f.outer, q.name
                                ),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether any policy forwards to an IPv4 host, and to an IPv6 host: what the host's
    /// `ip_forward` / `forwarding` must allow.
    pub fn forward_families(&self) -> (bool, bool) {
        let mut v4 = false;
        let mut v6 = false;
        for f in self.policies.iter().flat_map(|p| &p.forward) {
            v4 |= f.to.is_ipv4();
            v6 |= f.to.is_ipv6();
        }
        (v4, v6)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::config::Origin;

    const BASE: &str = "[agent]\nname = \"gw1\"\ninterfaces = [\"eth0\"]\n\n";

    fn parse(policies: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{policies}")).map_err(|e| e.to_string())
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_forward_opens_its_outer_port_and_maps_it() {
        let c = parse(
            "[[policy]]\nname = \"inner-ssh\"\ntimeout = \"30s\"\n\
             sequence = [\"tcp/7000\"]\nforward = \"tcp/2222 -> 10.240.2.2:22\"\n",
        )
        .expect("parses without open");
        let p = &c.policies[0];
        assert_eq!(p.open, [Access::tcp(2222)]);
        assert_eq!(p.forward[0].to, sock("10.240.2.2:22"));
        let rs = c.ruleset();
        assert!(rs.protected.contains(&Access::tcp(2222)));
        assert_eq!(
            rs.forwards,
            BTreeMap::from([(Access::tcp(2222), sock("10.240.2.2:22"))])
        );
        assert_eq!(c.forward_families(), (true, false));
    }

    #[test]
    fn a_list_of_forwards_beside_open_ports() {
        let c = parse(
            "[[policy]]\nname = \"mixed\"\nopen = [\"tcp/22\", \"udp/51820\"]\ntimeout = \"30s\"\n\
             sequence = [\"tcp/7000\"]\n\
             forward = [\"udp/51820 -> [fd00::5]:51820\", \"tcp/8443 -> 192.0.2.10:443\"]\n",
        )
        .expect("parses");
        let p = &c.policies[0];
        // Listed in open and forwarded: forwarded, and listed once.
        assert_eq!(
            p.open,
            [Access::tcp(22), Access::udp(51820), Access::tcp(8443)]
        );
        let rs = c.ruleset();
        assert_eq!(rs.forwards.len(), 2);
        assert_eq!(rs.forward_targets().len(), 2);
        assert_eq!(c.forward_families(), (true, true));
    }

    #[test]
    fn a_bad_forward_is_named_with_its_line_on_one_line() {
        let e = parse(
            "[[policy]]\nname = \"x\"\ntimeout = \"30s\"\nsequence = [\"tcp/7000\"]\n\
             forward = \"tcp/2222 -> fd00::5:22\"\n",
        )
        .expect_err("no brackets");
        assert!(e.starts_with("line 9, column 11 (forward = "), "{e}");
        assert!(
            e.contains("bad forward") && e.contains("[fd00::5]:22"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = parse(
            "[[policy]]\nname = \"x\"\ntimeout = \"30s\"\nsequence = [\"tcp/7000\"]\n\
             forward = [\"tcp/2222 -> 10.0.0.5:22\", \"tcp/2223 10.0.0.5:22\"]\n",
        )
        .expect_err("no arrow");
        assert!(
            e.starts_with("line 9") && e.contains("PROTO/PORT -> ADDR:PORT"),
            "{e}"
        );
        let e = parse(
            "[[policy]]\nname = \"x\"\ntimeout = \"30s\"\nsequence = [\"tcp/7000\"]\nforward = 22\n",
        )
        .expect_err("not a string");
        assert!(
            e.contains("a forward \"PROTO/PORT -> ADDR:PORT\" or a list"),
            "{e}"
        );
    }

    #[test]
    fn conflicts_are_refused_naming_the_forward() {
        let seq = "timeout = \"30s\"\nsequence = [\"tcp/7000\"]\n";
        let cases = [
            (
                format!(
                    "[[policy]]\nname = \"a\"\n{seq}forward = [\"tcp/2222 -> 10.0.0.5:22\", \"tcp/2222 -> 10.0.0.6:22\"]\n"
                ),
                "policy[0].forward[1]: tcp/2222 is forwarded twice",
            ),
            (
                format!(
                    "[[policy]]\nname = \"a\"\n{seq}forward = \"tcp/2222 -> 10.0.0.5:22\"\n\
                     [[policy]]\nname = \"b\"\ntimeout = \"30s\"\nsequence = [\"tcp/7001\"]\nforward = \"tcp/2222 -> 10.0.0.6:22\"\n"
                ),
                "policy[0].forward[0]: tcp/2222 is forwarded to 10.0.0.6:22 by policy \"b\"",
            ),
            (
                format!(
                    "[[policy]]\nname = \"ssh\"\nopen = [\"tcp/22\"]\n{seq}\
                     [[policy]]\nname = \"b\"\ntimeout = \"30s\"\nsequence = [\"tcp/7001\"]\nforward = \"tcp/22 -> 10.0.0.6:22\"\n"
                ),
                "policy[1].forward[0]: tcp/22 is opened on the gateway itself by policy \"ssh\"",
            ),
            (
                format!("[[policy]]\nname = \"a\"\n{seq}forward = \"tcp/7000 -> 10.0.0.5:22\"\n"),
                "policy[0].sequence: tcp/7000 is also a protected port",
            ),
            (
                format!(
                    "[firewall]\nbackend = \"command\"\nopen_command = \"true\"\n\n\
                     [[policy]]\nname = \"a\"\n{seq}forward = \"tcp/2222 -> 10.0.0.5:22\"\n"
                ),
                "policy[0].forward: needs firewall.backend = \"nftables\"",
            ),
            (
                format!("[[policy]]\nname = \"a\"\n{seq}"),
                "policy[0].open: name at least one protected port (or a forward)",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).expect_err(want);
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
        // The same target from two policies (two ways to open it) is one forward.
        let c = parse(&format!(
            "[[policy]]\nname = \"a\"\n{seq}forward = \"tcp/2222 -> 10.0.0.5:22\"\n\
             [[policy]]\nname = \"b\"\ntimeout = \"1m\"\nsequence = [\"tcp/7001\"]\nforward = \"tcp/2222 -> 10.0.0.5:22\"\n"
        ))
        .expect("same forward twice");
        assert_eq!(c.ruleset().forwards.len(), 1);
    }

    #[test]
    fn the_controllers_forwards_get_the_same_checks() {
        let c = parse("").expect("no policies");
        let def = |name: &str, to: &str| PolicyDef {
            name: name.into(),
            open: vec![],
            timeout: std::time::Duration::from_secs(30),
            max_timeout: None,
            sequence: vec!["tcp/7000".parse().expect("knock")],
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
            forward: vec![format!("tcp/2222 -> {to}").parse().expect("forward")],
        };
        let ok = c
            .with_policies(Origin::Controller, vec![], vec![def("a", "10.0.0.5:22")])
            .expect("valid");
        assert_eq!(ok.policies[0].open, [Access::tcp(2222)]);
        let mut b = def("b", "10.0.0.6:22");
        b.sequence = vec!["tcp/7001".parse().expect("knock")];
        let e = c
            .with_policies(Origin::Controller, vec![], vec![def("a", "10.0.0.5:22"), b])
            .expect_err("two targets");
        assert!(e.to_string().starts_with("policy[0].forward[0]:"), "{e}");
    }
}
