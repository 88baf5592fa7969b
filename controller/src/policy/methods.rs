//! The knock methods a policy enables besides SPA and fwknop: fixed knock
//! steps, rotating sequences ([`Rotation`], `proto/rotation.md`) and one-time
//! SPA keys ([`OtkOffline`]), with the validation of their stored fields.

use std::collections::BTreeSet;

use knockgate_proto::Access;
use knockgate_proto::rotation::{self, Protos, RotationParams};

use super::{InvalidPolicy, RawPolicy, invalid};

/// Knocks per rotating sequence when the policy leaves it at 0.
pub const DEFAULT_LENGTH: u8 = 4;
/// Lowest rotating knock port when the policy leaves it at 0.
pub const DEFAULT_PORT_LO: u16 = 20_000;
/// Highest rotating knock port when the policy leaves it at 0.
pub const DEFAULT_PORT_HI: u16 = 60_000;
/// Rotating window length when the policy leaves it at 0.
pub use knockgate_proto::policy::DEFAULT_WINDOW_SECS;
/// Shortest window accepted: shorter ones leave a user no time to knock.
pub const MIN_WINDOW_SECS: u32 = 5;

/// One step of a knock sequence (the one definition, in `knockgate-proto`).
pub use knockgate_proto::KnockStep;
use knockgate_proto::knock::FlagFilter;

/// A policy's rotating-sequence settings, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Knocks per sequence, 1..=16.
    pub length: u8,
    /// Protocols knocks use.
    pub protos: Protos,
    /// Inclusive port range knocks are drawn from.
    pub port_lo: u16,
    /// Upper end of that range.
    pub port_hi: u16,
    /// Window length, at least [`MIN_WINDOW_SECS`].
    pub window_secs: u32,
}

impl Rotation {
    /// The derivation parameters at a gateway protecting `exclude`.
    pub fn params(&self, exclude: Vec<u16>) -> RotationParams {
        RotationParams {
            length: self.length,
            protos: self.protos,
            port_lo: self.port_lo,
            port_hi: self.port_hi,
            exclude,
            window_secs: self.window_secs,
        }
    }
}

pub use knockgate_proto::policy::OtkOffline;

fn or_default<T: Copy + PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() { default } else { v }
}

/// The rotating settings of `raw` (`None` unless `rotating`), checked
/// against the policy's own protected ports `open`.
pub(super) fn rotation(
    raw: &RawPolicy,
    open: &BTreeSet<Access>,
) -> Result<Option<Rotation>, InvalidPolicy> {
    if !raw.rotating {
        let set = [
            ("rotating_length", raw.rotating_length != 0),
            ("rotating_protos", !raw.rotating_protos.is_empty()),
            ("rotating_port_lo", raw.rotating_port_lo != 0),
            ("rotating_port_hi", raw.rotating_port_hi != 0),
            ("window_secs", raw.window_secs != 0),
        ];
        if let Some((field, _)) = set.iter().find(|(_, on)| *on) {
            return Err(invalid(*field, "only applies with rotating = true"));
        }
        return Ok(None);
    }
    let length = u8::try_from(or_default(raw.rotating_length, u32::from(DEFAULT_LENGTH)))
        .ok()
        .filter(|l| (1..=rotation::MAX_LENGTH).contains(l))
        .ok_or_else(|| invalid("rotating_length", "must be 1..=16"))?;
    let protos = match raw.rotating_protos.as_str() {
        "" => Protos::Both,
        "tcp" => Protos::Tcp,
        "udp" => Protos::Udp,
        other => {
            return Err(invalid(
                "rotating_protos",
                format!("{other:?}: expected \"tcp\", \"udp\" or \"\" (both)"),
            ));
        }
    };
    let port = |field: &str, v: u32, default: u16| {
        u16::try_from(or_default(v, u32::from(default)))
            .map_err(|_| invalid(field, format!("{v} is not in 1..=65535")))
    };
    let port_lo = port("rotating_port_lo", raw.rotating_port_lo, DEFAULT_PORT_LO)?;
    let port_hi = port("rotating_port_hi", raw.rotating_port_hi, DEFAULT_PORT_HI)?;
    if port_lo > port_hi {
        return Err(invalid(
            "rotating_port_hi",
            format!("{port_hi} is below rotating_port_lo {port_lo}"),
        ));
    }
    let window_secs = or_default(raw.window_secs, DEFAULT_WINDOW_SECS);
    if window_secs < MIN_WINDOW_SECS {
        return Err(invalid(
            "window_secs",
            format!("{window_secs} is shorter than {MIN_WINDOW_SECS} s"),
        ));
    }
    let r = Rotation {
        length,
        protos,
        port_lo,
        port_hi,
        window_secs,
    };
    // Other policies at a gateway may exclude more ports; a derivation that
    // fails there is skipped (and logged) when material is pushed.
    let exclude = open.iter().map(|a| a.port).collect();
    let usable = (usize::from(port_hi) - usize::from(port_lo) + 1)
        - open
            .iter()
            .map(|a| a.port)
            .filter(|p| (port_lo..=port_hi).contains(p))
            .collect::<BTreeSet<_>>()
            .len();
    if usable < usize::from(length) + 2
        || rotation::derive_sequence(&[0; 32], "check", 0, &r.params(exclude)).is_err()
    {
        return Err(invalid(
            "rotating_port_lo/rotating_port_hi",
            format!("{usable} usable ports are too few for {length} distinct knocks"),
        ));
    }
    Ok(Some(r))
}

/// The one-time-key setting of `raw` (`None` unless `otk`).
pub(super) fn otk(raw: &RawPolicy) -> Result<Option<OtkOffline>, InvalidPolicy> {
    if !raw.otk {
        if !raw.otk_offline.is_empty() {
            return Err(invalid("otk_offline", "only applies with otk = true"));
        }
        return Ok(None);
    }
    match raw.otk_offline.as_str() {
        "" => Ok(Some(OtkOffline::default())),
        rule => {
            rule.parse()
                .map(Some)
                .map_err(|e: knockgate_proto::policy::ParseOtkOfflineError| {
                    invalid("otk_offline", e.to_string())
                })
        }
    }
}

/// Writes the rotating and one-time-key settings back into `raw`.
pub(super) fn fill_raw(raw: &mut RawPolicy, rotating: Option<&Rotation>, otk: Option<OtkOffline>) {
    if let Some(r) = rotating {
        raw.rotating = true;
        raw.rotating_length = u32::from(r.length);
        raw.rotating_protos = match r.protos {
            Protos::Tcp => "tcp".into(),
            Protos::Udp => "udp".into(),
            Protos::Both => String::new(),
        };
        raw.rotating_port_lo = u32::from(r.port_lo);
        raw.rotating_port_hi = u32::from(r.port_hi);
        raw.window_secs = r.window_secs;
    }
    if let Some(o) = otk {
        raw.otk = true;
        raw.otk_offline = o.as_str().into();
    }
}

/// A sequence's timing and flag rules: `(min_gap_ms, max_gap_ms, tcp_flags)`. Gaps need a
/// fixed sequence; flags a fixed or a rotating one.
pub fn timing(
    raw: &RawPolicy,
    sequence: &[KnockStep],
    rotating: &Option<Rotation>,
) -> Result<(u32, u32, Option<FlagFilter>), InvalidPolicy> {
    if sequence.is_empty() {
        for (k, set) in [
            ("min_gap_ms", raw.min_gap_ms != 0),
            ("max_gap_ms", raw.max_gap_ms != 0),
        ] {
            if set {
                return Err(invalid(k, "set without a sequence"));
            }
        }
    }
    if raw.max_gap_ms != 0 && raw.max_gap_ms < raw.min_gap_ms {
        return Err(invalid("max_gap_ms", "is shorter than min_gap_ms"));
    }
    let tcp_flags = match raw.tcp_flags.as_str() {
        "" => None,
        _ if sequence.is_empty() && rotating.is_none() => {
            return Err(invalid("tcp_flags", "set without a sequence"));
        }
        text => Some(
            text.parse::<FlagFilter>()
                .map_err(|e| invalid("tcp_flags", format!("{text:?}: {e}")))?,
        ),
    };
    Ok((raw.min_gap_ms, raw.max_gap_ms, tcp_flags))
}

/// The OS names a policy's sequence SYNs must be fingerprinted as: each a p0f label name
/// (printable, at most 64 characters), and only with a fixed sequence that has a TCP knock
/// (the OS is read from its SYNs).
pub(super) fn require_os(
    names: &[String],
    sequence: &[KnockStep],
) -> Result<Vec<String>, InvalidPolicy> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let tcp = sequence.iter().any(|s| {
        matches!(
            s,
            KnockStep::Port {
                proto: knockgate_proto::Proto::Tcp,
                ..
            }
        )
    });
    if !tcp {
        return Err(invalid(
            "require_os",
            "needs a TCP knock in the sequence: the OS is read from the knocks' TCP SYNs",
        ));
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty()
            || name.len() > 64
            || !name.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(invalid(
                format!("require_os[{i}]"),
                "expected an OS name as p0f labels it, such as \"Linux\" or \"Windows\"",
            ));
        }
    }
    Ok(names.to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::PolicyDef;
    use super::*;

    fn raw() -> RawPolicy {
        RawPolicy {
            open: vec!["tcp/22".into()],
            users: vec!["alice".into()],
            timeout_secs: 30,
            rotating: true,
            ..RawPolicy::default()
        }
    }

    fn err(r: RawPolicy) -> String {
        PolicyDef::validate("ssh", r).unwrap_err().to_string()
    }

    #[test]
    fn rotating_and_otk_alone_are_methods_with_defaults() {
        let p = PolicyDef::validate("ssh", raw()).unwrap();
        let r = p.rotating.unwrap();
        assert_eq!(
            (r.length, r.protos, r.port_lo, r.port_hi, r.window_secs),
            (4, Protos::Both, 20_000, 60_000, 30)
        );
        assert_eq!(p.otk, None);
        let back = PolicyDef::from_json("ssh", &p.to_json()).unwrap();
        assert_eq!(back, p);
        let otk = PolicyDef::validate(
            "ssh",
            RawPolicy {
                rotating: false,
                otk: true,
                otk_offline: "local".into(),
                ..raw()
            },
        )
        .unwrap();
        assert_eq!(otk.otk, Some(OtkOffline::Local));
        assert_eq!(otk.to_raw().otk_offline, "local");
        assert_eq!(
            PolicyDef::from_json("ssh", &otk.to_json()).unwrap().otk,
            Some(OtkOffline::Local)
        );
    }

    #[test]
    fn rotating_settings_are_checked() {
        let cases = [
            (
                RawPolicy {
                    rotating_length: 17,
                    ..raw()
                },
                "rotating_length:",
            ),
            (
                RawPolicy {
                    rotating_protos: "icmp".into(),
                    ..raw()
                },
                "rotating_protos:",
            ),
            (
                RawPolicy {
                    rotating_port_lo: 70_000,
                    ..raw()
                },
                "rotating_port_lo:",
            ),
            (
                RawPolicy {
                    rotating_port_lo: 3000,
                    rotating_port_hi: 2000,
                    ..raw()
                },
                "rotating_port_hi:",
            ),
            (
                RawPolicy {
                    window_secs: 4,
                    ..raw()
                },
                "window_secs:",
            ),
            (
                RawPolicy {
                    rotating_port_lo: 20,
                    rotating_port_hi: 24,
                    open: vec!["tcp/22".into()],
                    ..raw()
                },
                "rotating_port_lo/rotating_port_hi:",
            ),
            (
                RawPolicy {
                    rotating: false,
                    spa: true,
                    window_secs: 60,
                    ..raw()
                },
                "window_secs: only applies",
            ),
            (
                RawPolicy {
                    otk: true,
                    otk_offline: "maybe".into(),
                    ..raw()
                },
                "otk_offline:",
            ),
            (
                RawPolicy {
                    otk_offline: "local".into(),
                    ..raw()
                },
                "otk_offline: only applies",
            ),
        ];
        for (r, want) in cases {
            let got = err(r);
            assert!(got.starts_with(want), "{got} (wanted {want})");
        }
    }

    #[test]
    fn the_tightest_rotating_settings_are_kept() {
        let tcp = PolicyDef::validate(
            "ssh",
            RawPolicy {
                rotating_protos: "tcp".into(),
                rotating_length: 16,
                rotating_port_lo: 1000,
                rotating_port_hi: 1017,
                window_secs: 5,
                ..raw()
            },
        )
        .unwrap();
        assert_eq!(tcp.to_raw().rotating_protos, "tcp");
        assert_eq!(tcp.rotating.unwrap().window_secs, 5);
    }
}
