//! How a policy can be opened: the method flags of `knockadm policy add`
//! (native SPA, fwknop, a fixed sequence, rotating sequences, one-time
//! keys), their checks, and how a policy's methods read in a table.

use clap::{Args, ValueEnum, value_parser};
use knockgate_proto::api::PolicySpec;

use crate::admin::AdminError;
use crate::admin::args::{parse_port_range, parse_secs};
use crate::admin::output::secs_cell;
use knockgate_proto::KnockStep;
use knockgate_proto::knock::FlagFilter;

/// Which transports a rotating sequence may knock with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RotatingProtos {
    /// TCP and UDP knocks
    Both,
    /// TCP knocks only
    Tcp,
    /// UDP knocks only
    Udp,
}

pub use knockgate_proto::policy::OtkOffline;

/// The method flags of `knockadm policy add`.
#[derive(Debug, Clone, Args)]
pub struct MethodArgs {
    /// Accept native knockgate SPA packets
    #[arg(long)]
    pub spa: bool,

    /// Accept the stock fwknop client's packets
    #[arg(long)]
    pub fwknop: bool,

    /// Accept sealed knock sequences: the request encrypted in the knocked ports
    /// (`knocker open --method sealed`), under the users' SPA keys
    #[arg(long)]
    pub sealed: bool,

    /// Accept this fixed knock sequence: tcp/PORT, udp/PORT or icmp, in order
    #[arg(long, value_name = "KNOCKS", value_delimiter = ',')]
    pub sequence: Vec<KnockStep>,

    /// Time allowed to complete --sequence
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_secs)]
    pub sequence_timeout: u32,

    /// Least time between two knocks of --sequence (knockd's anti-scan rule),
    /// e.g. 200ms. Default: none
    #[arg(long, value_name = "DURATION", requires = "sequence", value_parser = parse_millis)]
    pub min_gap: Option<u32>,

    /// Most time between two knocks of --sequence, e.g. 2s. Default: no limit
    #[arg(long, value_name = "DURATION", requires = "sequence", value_parser = parse_millis)]
    pub max_gap: Option<u32>,

    /// TCP flags a TCP knock of the sequence (fixed or rotating) must carry,
    /// e.g. syn,!ack. Default: syn,!ack
    #[arg(long, value_name = "FLAGS")]
    pub tcp_flags: Option<FlagFilter>,

    /// The sequence's TCP SYNs must come from this OS, as p0f fingerprints it
    /// (Linux, Windows, FreeBSD, …; repeat or separate with commas for any of
    /// several). Needs a TCP knock in --sequence
    #[arg(long, value_name = "OS", value_delimiter = ',', requires = "sequence")]
    pub require_os: Vec<String>,

    /// Accept each user's rotating knock sequence (derived from their secret
    /// and the time window)
    #[arg(long)]
    pub rotating: bool,

    /// Knocks in a rotating sequence. Default: 4
    #[arg(long, value_name = "N", requires = "rotating",
          value_parser = value_parser!(u32).range(1..=64))]
    pub rotating_length: Option<u32>,

    /// Transports rotating knocks use. Default: both
    #[arg(long, value_name = "PROTOS", value_enum, requires = "rotating")]
    pub rotating_protos: Option<RotatingProtos>,

    /// Ports rotating knocks are drawn from, LO-HI. Default: 20000-60000
    #[arg(long, value_name = "LO-HI", requires = "rotating", value_parser = parse_port_range)]
    pub rotating_ports: Option<(u16, u16)>,

    /// Length of a rotating sequence's time window. Default: 30s
    #[arg(long, value_name = "DURATION", requires = "rotating", value_parser = parse_secs)]
    pub window: Option<u32>,

    /// Accept native SPA sealed with one-time keys (each usable once,
    /// fleet-wide)
    #[arg(long)]
    pub otk: bool,

    /// What to do with one-time keys while the controller is unreachable:
    /// deny (refuse them: a key could otherwise be used twice) or local (accept
    /// them on this agent alone, reporting them when back online). Default: deny
    #[arg(long, value_name = "RULE", requires = "otk",
          value_parser = |s: &str| s.parse::<OtkOffline>())]
    pub otk_offline: Option<OtkOffline>,
}

impl MethodArgs {
    /// Fills the method fields of `spec`.
    ///
    /// # Errors
    /// [`AdminError::Input`] when no method is chosen.
    pub fn apply(&self, spec: &mut PolicySpec) -> Result<(), AdminError> {
        if !(self.spa || self.fwknop || self.sealed || self.rotating || self.otk)
            && self.sequence.is_empty()
        {
            return Err(AdminError::Input(
                "policy needs at least one method: --spa, --fwknop, --sealed, --sequence, --rotating or --otk"
                    .to_owned(),
            ));
        }
        spec.spa = self.spa;
        spec.fwknop = self.fwknop;
        spec.sealed = self.sealed;
        spec.sequence = self.sequence.iter().map(ToString::to_string).collect();
        spec.sequence_timeout_secs = if self.sequence.is_empty() {
            0
        } else {
            self.sequence_timeout
        };
        spec.min_gap_ms = self.min_gap.unwrap_or(0);
        spec.max_gap_ms = self.max_gap.unwrap_or(0);
        spec.tcp_flags = self.tcp_flags.map(|f| f.to_string()).unwrap_or_default();
        spec.require_os.clone_from(&self.require_os);
        spec.rotating = self.rotating;
        spec.rotating_length = self.rotating_length.unwrap_or(0);
        spec.rotating_protos = match self.rotating_protos {
            None | Some(RotatingProtos::Both) => String::new(),
            Some(RotatingProtos::Tcp) => "tcp".to_owned(),
            Some(RotatingProtos::Udp) => "udp".to_owned(),
        };
        let (lo, hi) = self.rotating_ports.unwrap_or((0, 0));
        spec.rotating_port_lo = u32::from(lo);
        spec.rotating_port_hi = u32::from(hi);
        spec.window_secs = self.window.unwrap_or(0);
        spec.otk = self.otk;
        spec.otk_offline = match self.otk_offline {
            None => String::new(),
            Some(o) => o.as_str().to_owned(),
        };
        Ok(())
    }
}

/// A duration of 1 ms to ~49 days, in whole milliseconds (`200ms`, `2s`).
fn parse_millis(s: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    match u32::try_from(d.as_millis()) {
        Ok(0) => Err("must be at least 1ms".to_owned()),
        Ok(ms) if d.subsec_nanos() % 1_000_000 == 0 => Ok(ms),
        Ok(_) => Err("whole milliseconds only".to_owned()),
        Err(_) => Err("too long".to_owned()),
    }
}

/// The methods of a policy, short: `spa,fwknop,sequence,rotating,otk`.
#[must_use]
pub fn methods(p: &PolicySpec) -> String {
    let mut methods = Vec::new();
    for (on, name) in [
        (p.spa, "spa"),
        (p.fwknop, "fwknop"),
        (p.sealed, "sealed"),
        (!p.sequence.is_empty(), "sequence"),
        (p.rotating, "rotating"),
        (p.otk, "otk"),
    ] {
        if on {
            methods.push(name);
        }
    }
    methods.join(",")
}

/// `policy show` lines for the methods with settings (empty when off),
/// with the controller's defaults spelled out.
#[must_use]
pub fn method_fields(p: &PolicySpec) -> Vec<(&'static str, String)> {
    let sequence = if p.sequence.is_empty() {
        String::new()
    } else {
        let within = if p.sequence_timeout_secs == 0 {
            10
        } else {
            p.sequence_timeout_secs
        };
        let mut text = format!("{} (within {})", p.sequence.join(" "), secs_cell(within));
        if p.min_gap_ms != 0 {
            text.push_str(&format!(", gaps of at least {} ms", p.min_gap_ms));
        }
        if p.max_gap_ms != 0 {
            text.push_str(&format!(", gaps of at most {} ms", p.max_gap_ms));
        }
        if !p.tcp_flags.is_empty() {
            text.push_str(&format!(", tcp flags {}", p.tcp_flags));
        }
        if !p.require_os.is_empty() {
            text.push_str(&format!(", SYNs from {}", p.require_os.join(" or ")));
        }
        text
    };
    let rotating = if p.rotating {
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let protos = if p.rotating_protos.is_empty() {
            "tcp+udp"
        } else {
            p.rotating_protos.as_str()
        };
        format!(
            "{} {protos} knocks on ports {}-{}, {} windows",
            or(p.rotating_length, 4),
            or(p.rotating_port_lo, 20_000),
            or(p.rotating_port_hi, 60_000),
            secs_cell(or(
                p.window_secs,
                knockgate_proto::policy::DEFAULT_WINDOW_SECS
            )),
        )
    } else {
        String::new()
    };
    let otk = if p.otk {
        let offline = if p.otk_offline.is_empty() {
            "deny"
        } else {
            p.otk_offline.as_str()
        };
        format!("yes (offline: {offline})")
    } else {
        String::new()
    };
    vec![
        ("sequence", sequence),
        ("rotating", rotating),
        ("one-time keys", otk),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        methods: MethodArgs,
    }

    fn spec(args: &[&str]) -> Result<PolicySpec, String> {
        let cli = Cli::try_parse_from(["m"].iter().chain(args)).map_err(|e| e.to_string())?;
        let mut spec = PolicySpec::default();
        cli.methods.apply(&mut spec).map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn rotating_and_otk() {
        let s = spec(&[
            "--rotating",
            "--rotating-length",
            "6",
            "--rotating-protos",
            "udp",
            "--rotating-ports",
            "30000-31000",
            "--window",
            "1m",
            "--otk",
            "--otk-offline",
            "local",
        ])
        .unwrap();
        assert!(s.rotating && s.otk && !s.spa);
        assert_eq!((s.rotating_length, s.rotating_protos.as_str()), (6, "udp"));
        assert_eq!(
            (s.rotating_port_lo, s.rotating_port_hi, s.window_secs),
            (30000, 31000, 60)
        );
        assert_eq!(s.otk_offline, "local");
        assert_eq!(methods(&s), "rotating,otk");
        let fields = method_fields(&s);
        assert_eq!(fields[1].1, "6 udp knocks on ports 30000-31000, 1m windows");
        assert_eq!(fields[2].1, "yes (offline: local)");
    }

    #[test]
    fn sequence_timing_and_flags_reach_the_spec() {
        let s = spec(&[
            "--sequence",
            "tcp/7000,8000:udp",
            "--min-gap",
            "200ms",
            "--max-gap",
            "2s",
            "--tcp-flags",
            "syn,!ack,!rst",
        ])
        .unwrap();
        assert_eq!(s.sequence, ["tcp/7000", "udp/8000"]);
        assert_eq!((s.min_gap_ms, s.max_gap_ms), (200, 2000));
        assert_eq!(s.tcp_flags, "syn,!rst,!ack");
        assert_eq!(
            method_fields(&s)[0].1,
            "tcp/7000 udp/8000 (within 10s), gaps of at least 200 ms, gaps of at most 2000 ms, \
             tcp flags syn,!rst,!ack"
        );
        assert!(
            spec(&["--spa", "--min-gap", "1s"])
                .unwrap_err()
                .contains("--sequence")
        );
        let e = spec(&["--sequence", "tcp/1", "--tcp-flags", "syn,!syn"]).unwrap_err();
        assert!(e.contains("both requires and forbids a flag"), "{e}");
        let e = spec(&["--sequence", "tcp/1", "--min-gap", "1.5ms"]).unwrap_err();
        assert!(e.contains("whole milliseconds"), "{e}");
    }

    #[test]
    fn defaults_stay_zero_for_the_controller() {
        let s = spec(&["--rotating", "--otk"]).unwrap();
        assert_eq!(
            (s.rotating_length, s.rotating_port_lo, s.window_secs),
            (0, 0, 0)
        );
        assert_eq!(
            (s.rotating_protos.as_str(), s.otk_offline.as_str()),
            ("", "")
        );
        assert_eq!(
            method_fields(&s)[1].1,
            "4 tcp+udp knocks on ports 20000-60000, 30s windows"
        );
    }

    #[test]
    fn settings_need_their_method() {
        for (args, needle) in [
            (&["--spa", "--window", "30s"][..], "--rotating"),
            (&["--spa", "--otk-offline", "local"], "--otk"),
            (
                &["--rotating", "--rotating-ports", "9-8"],
                "low port is above",
            ),
            (&["--rotating", "--rotating-protos", "sctp"], "'sctp'"),
            (&[], "at least one method"),
        ] {
            let err = spec(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
