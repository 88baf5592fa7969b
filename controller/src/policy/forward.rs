//! A policy's forwards: `tcp/2222 -> 10.0.0.5:22`, read by the one parser
//! ([`knockgate_proto::Forward`]). Each outer port is forwarded once and opened like any
//! `open` port; the agents check the policies they get together (one target per outer
//! port, never also served by the gateway itself).

use std::collections::BTreeSet;

use knockgate_proto::{Access, Forward};

use super::{InvalidPolicy, invalid};

/// The `forward` field, each parsed, no outer port twice.
pub(super) fn parse(text: &[String]) -> Result<Vec<Forward>, InvalidPolicy> {
    let mut out: Vec<Forward> = Vec::with_capacity(text.len());
    for (i, s) in text.iter().enumerate() {
        let f: Forward = s
            .parse()
            .map_err(|e| invalid(format!("forward[{i}]"), format!("{s:?}: {e}")))?;
        if out.iter().any(|g| g.outer == f.outer) {
            return Err(invalid(
                format!("forward[{i}]"),
                format!("{} is forwarded twice", f.outer),
            ));
        }
        out.push(f);
    }
    Ok(out)
}

/// `open` with the forwards' outer ports added.
pub(super) fn with_outer_ports(
    mut open: BTreeSet<Access>,
    forward: &[Forward],
) -> BTreeSet<Access> {
    open.extend(forward.iter().map(|f| f.outer));
    open
}

#[cfg(test)]
mod tests {
    use super::super::{PolicyDef, RawPolicy};

    fn raw(forward: &[&str], open: &[&str]) -> RawPolicy {
        RawPolicy {
            open: open.iter().map(|s| (*s).to_owned()).collect(),
            forward: forward.iter().map(|s| (*s).to_owned()).collect(),
            timeout_secs: 30,
            sequence: vec!["tcp/7000".into()],
            ..RawPolicy::default()
        }
    }

    #[test]
    fn a_forward_opens_its_outer_port_and_round_trips() {
        let p = PolicyDef::validate("inner", raw(&["tcp/2222 -> 10.240.2.2:22"], &[]))
            .expect("no open needed");
        assert_eq!(
            p.open.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["tcp/2222"]
        );
        assert_eq!(p.forward[0].to_string(), "tcp/2222 -> 10.240.2.2:22");
        let back = PolicyDef::from_json("inner", &p.to_json()).expect("stored");
        assert_eq!(back, p);
        assert_eq!(back.to_raw().forward, ["tcp/2222 -> 10.240.2.2:22"]);
        let both = PolicyDef::validate(
            "inner",
            raw(&["udp/51820->[fd00::5]:51820"], &["tcp/22", "udp/51820"]),
        )
        .expect("listed in open too");
        assert_eq!(both.open.len(), 2);
    }

    #[test]
    fn forwards_cross_the_wire_to_the_agent() {
        use knockgate_proto::api;
        let spec = api::PolicySpec {
            name: "inner".into(),
            forward: vec!["tcp/2222 -> 10.240.2.2:22".into()],
            timeout_secs: 30,
            sequence: vec!["tcp/7000".into()],
            ..Default::default()
        };
        let def = PolicyDef::try_from(spec).expect("valid");
        let listed = crate::convert::policy_to_api(&def);
        assert_eq!(listed.forward, ["tcp/2222 -> 10.240.2.2:22"]);
        assert_eq!(listed.open.len(), 1, "the outer port is opened");
        let gw = crate::name::AgentName::new("gw1").expect("name");
        let defs = [def];
        let view = crate::desired::compute(&gw, &Default::default(), &defs, &[]);
        let sent = api::Policy::from(&*view.policies["inner"]);
        assert_eq!(sent.forward, ["tcp/2222 -> 10.240.2.2:22"]);
        assert_eq!(
            crate::desired::protected_ports(defs.iter()),
            [2222],
            "rotating knocks never use an outer port"
        );
    }

    #[test]
    fn bad_forwards_name_the_field() {
        for (forward, open, want) in [
            (
                &["tcp/2222 -> fd00::5:22"][..],
                &[][..],
                "forward[0]: \"tcp/2222 -> fd00::5:22\": target: expected ADDR:PORT",
            ),
            (
                &["tcp/2222 -> 10.0.0.5:22", "tcp/2222 -> 10.0.0.6:22"],
                &[],
                "forward[1]: tcp/2222 is forwarded twice",
            ),
            (
                &["tcp/2222 -> 127.0.0.1:22"],
                &[],
                "forward[0]: \"tcp/2222 -> 127.0.0.1:22\": target: a loopback address",
            ),
            (
                &[],
                &[],
                "open: at least one tcp/PORT or udp/PORT is required (or a forward)",
            ),
        ] {
            let e = PolicyDef::validate("inner", raw(forward, open))
                .expect_err(want)
                .to_string();
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
    }
}
