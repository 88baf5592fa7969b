//! What `knocker open` asks to open when no `--access` is given: what the
//! profile says the user's one policy at the gateway opens for the chosen
//! method. A gateway entry without `[[gateway.policy]]` entries (a profile
//! written before them) keeps the old default, tcp/22. Pure: [`choose`] looks at
//! the profile's gateway entry only.

use knockgate_proto::Access;
use knockgate_proto::spa::MAX_ACCESS;

use crate::profile::{ProfileGateway, ProfileGatewayPolicy, known_list as list};

/// Why no access could be chosen from the profile (exit 64: pass `--access`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseAccessError {
    /// No policy at the gateway allows the method.
    #[error("gateway {gateway}: no policy in the profile allows {method} (policies: {}): pass --access", list(.policies))]
    NoPolicy {
        /// The gateway.
        gateway: String,
        /// The method chosen.
        method: &'static str,
        /// Every policy at the gateway, as `name (open…) by methods`.
        policies: Vec<String>,
    },
    /// Several policies at the gateway allow the method.
    #[error("gateway {gateway}: policies {} allow {method}: pass --access", .policies.join(", "))]
    Ambiguous {
        /// The gateway.
        gateway: String,
        /// The method chosen.
        method: &'static str,
        /// The policies allowing it, as `name (open…)`.
        policies: Vec<String>,
    },
    /// The one policy opens more than one packet can ask for.
    #[error(
        "gateway {gateway}: policy {policy} opens {count} ports, more than one packet carries ({MAX_ACCESS}): pass --access"
    )]
    TooMany {
        /// The gateway.
        gateway: String,
        /// The policy.
        policy: String,
        /// How many ports it opens.
        count: usize,
    },
    /// The one policy's `open` entry is unusable.
    #[error(
        "gateway {gateway}: policy {policy} in the profile has an invalid {reason}: pass --access"
    )]
    Invalid {
        /// The gateway.
        gateway: String,
        /// The policy.
        policy: String,
        /// What is wrong (the entry and why).
        reason: String,
    },
}

/// The access to ask `gateway` for with `method` (a `--method` word) when the
/// user gave none: tcp/22 when the entry lists no policies, else everything the
/// one policy allowing `method` opens.
///
/// # Errors
/// [`ChooseAccessError`] when no policy or several allow `method`, or the one
/// that does opens too much or holds an invalid entry.
pub fn choose(
    gateway: &ProfileGateway,
    method: &'static str,
) -> Result<Vec<Access>, ChooseAccessError> {
    if gateway.policies.is_empty() {
        return Ok(vec![Access::tcp(22)]);
    }
    let allowing: Vec<&ProfileGatewayPolicy> = gateway
        .policies
        .iter()
        .filter(|p| p.allows(method))
        .collect();
    let policy = match allowing.as_slice() {
        [one] => *one,
        [] => {
            return Err(ChooseAccessError::NoPolicy {
                gateway: gateway.name.clone(),
                method,
                policies: gateway
                    .policies
                    .iter()
                    .map(|p| format!("{} by {}", p.label(), list(&p.methods)))
                    .collect(),
            });
        }
        several => {
            return Err(ChooseAccessError::Ambiguous {
                gateway: gateway.name.clone(),
                method,
                policies: several.iter().map(|p| p.label()).collect(),
            });
        }
    };
    let access = policy
        .access()
        .map_err(|reason| ChooseAccessError::Invalid {
            gateway: gateway.name.clone(),
            policy: policy.name.clone(),
            reason,
        })?;
    if access.is_empty() {
        return Err(ChooseAccessError::Invalid {
            gateway: gateway.name.clone(),
            policy: policy.name.clone(),
            reason: "open list (empty)".to_owned(),
        });
    }
    if access.len() > MAX_ACCESS {
        return Err(ChooseAccessError::TooMany {
            gateway: gateway.name.clone(),
            policy: policy.name.clone(),
            count: access.len(),
        });
    }
    Ok(access)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, open: &[&str], methods: &[&str]) -> ProfileGatewayPolicy {
        ProfileGatewayPolicy {
            name: name.into(),
            open: open.iter().map(|s| (*s).to_owned()).collect(),
            methods: methods.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn gw1(policies: Vec<ProfileGatewayPolicy>) -> ProfileGateway {
        ProfileGateway {
            name: "gw1".into(),
            address: "192.0.2.1".into(),
            policies,
            rotating: vec![],
        }
    }

    #[test]
    fn without_policy_entries_tcp_22_as_before() {
        assert_eq!(choose(&gw1(vec![]), "spa"), Ok(vec![Access::tcp(22)]));
        assert_eq!(choose(&gw1(vec![]), "otk"), Ok(vec![Access::tcp(22)]));
    }

    #[test]
    fn the_one_policy_allowing_the_method_opens_all_it_opens() {
        let gw = gw1(vec![
            policy("web", &["tcp/443", "tcp/80", "tcp/443"], &["spa", "otk"]),
            policy("ssh", &["tcp/2222"], &["fwknop", "rotating"]),
        ]);
        assert_eq!(
            choose(&gw, "spa"),
            Ok(vec![Access::tcp(80), Access::tcp(443)])
        );
        assert_eq!(choose(&gw, "otk"), choose(&gw, "spa"));
        assert_eq!(choose(&gw, "fwknop"), Ok(vec![Access::tcp(2222)]));
    }

    #[test]
    fn several_policies_are_named_with_what_they_open() {
        let gw = gw1(vec![
            policy("ssh", &["tcp/22"], &["spa"]),
            policy("web", &["tcp/443"], &["spa", "fwknop"]),
        ]);
        let err = choose(&gw, "spa").unwrap_err();
        assert_eq!(
            err.to_string(),
            "gateway gw1: policies ssh (tcp/22), web (tcp/443) allow spa: pass --access"
        );
        assert_eq!(choose(&gw, "fwknop"), Ok(vec![Access::tcp(443)]));
    }

    #[test]
    fn no_policy_allowing_the_method_names_what_there_is() {
        let gw = gw1(vec![policy("ssh", &["tcp/22"], &["spa", "rotating"])]);
        let err = choose(&gw, "otk").unwrap_err().to_string();
        assert_eq!(
            err,
            "gateway gw1: no policy in the profile allows otk \
             (policies: ssh (tcp/22) by spa, rotating): pass --access"
        );
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn too_many_ports_or_a_bad_entry_ask_for_access() {
        let ports: Vec<String> = (1..=17).map(|p| format!("udp/{p}")).collect();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        let gw = gw1(vec![policy("big", &ports, &["spa"])]);
        assert_eq!(
            choose(&gw, "spa").unwrap_err().to_string(),
            "gateway gw1: policy big opens 17 ports, more than one packet carries (16): pass --access"
        );
        let gw = gw1(vec![policy("big", &ports[..16], &["spa"])]);
        assert_eq!(choose(&gw, "spa").unwrap().len(), MAX_ACCESS);

        let gw = gw1(vec![policy("odd", &["tcp/22", "icmp"], &["spa"])]);
        let err = choose(&gw, "spa").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "gateway gw1: policy odd in the profile has an invalid open entry \"icmp\""
            ),
            "{err}"
        );
        let gw = gw1(vec![policy("empty", &[], &["spa"])]);
        assert!(matches!(
            choose(&gw, "spa"),
            Err(ChooseAccessError::Invalid { .. })
        ));
    }
}
