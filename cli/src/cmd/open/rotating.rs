//! `knocker open --method rotating`: the current window's knock sequence for one
//! rotating policy at the gateway, derived from the profile's rotating secret
//! and the policy's settings there (`proto/rotation.md`), sent with the
//! ordinary knock sender. The choice of window is [`plan`], pure and tested
//! with time passed in.

use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use knockgate_proto::rotation::{derive_sequence, window_index};

use super::{OpenArgs, OpenCmdError};
use crate::knock::send_sequence;
use crate::profile::{Profile, ProfileError, ProfileGateway};
use crate::resolve::resolve_host;
use knockgate_proto::KnockStep;

/// Time between two knocks unless `--delay` says otherwise.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(20);

/// Knocking starts only if at least this much of the window is left once the
/// knocks are sent; otherwise knocker waits for the next window.
const MIN_LEFT: Duration = Duration::from_secs(2);

/// Which window to knock in, and how long to wait for it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    window: u64,
    wait: Duration,
}

/// The plan at `now` (since the Unix epoch) for windows of `window_secs` and a
/// sequence that takes `sending` to send: the current window, or the next one
/// (after waiting for it) when the current one ends too soon.
fn plan(now: Duration, window_secs: u32, sending: Duration) -> Plan {
    let window = window_index(now.as_secs(), window_secs);
    let ends = Duration::from_secs(
        window
            .saturating_add(1)
            .saturating_mul(u64::from(window_secs.max(1))),
    );
    let left = ends.saturating_sub(now);
    if left < MIN_LEFT.saturating_add(sending) {
        Plan {
            window: window.saturating_add(1),
            wait: left,
        }
    } else {
        Plan {
            window,
            wait: Duration::ZERO,
        }
    }
}

/// Derives and sends the sequence; with `--verbose`, says which window, what
/// was sent and any wait to `out`.
pub(super) fn run(
    args: &OpenArgs,
    profile: &Profile,
    gateway: &ProfileGateway,
    host: &str,
    out: &mut dyn Write,
) -> Result<(), OpenCmdError> {
    let secret = profile.rotating_secret("--method rotating", &args.profile)?;
    let (entry, params) = profile.rotation(gateway, args.policy.as_deref(), &args.profile)?;
    let target = resolve_host(host, args.family())?;
    let delay = args.delay.unwrap_or(DEFAULT_DELAY);
    let sending = delay
        .checked_mul(u32::from(params.length.saturating_sub(1)))
        .unwrap_or(Duration::MAX);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let plan = plan(now, params.window_secs, sending);
    let sequence =
        derive_sequence(&secret, &gateway.name, plan.window, &params).map_err(|err| {
            ProfileError::BadRotation {
                policy: entry.policy.clone(),
                gateway: gateway.name.clone(),
                reason: err.to_string(),
                path: args.profile.clone(),
            }
        })?;
    let knocks: Vec<KnockStep> = sequence.iter().map(|a| KnockStep::from(*a)).collect();
    let say = |out: &mut dyn Write, line: String| -> Result<(), OpenCmdError> {
        if args.verbose {
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(OpenCmdError::Output)?;
        }
        Ok(())
    };
    if !plan.wait.is_zero() {
        say(
            out,
            format!(
                "window {} ends in {} ms: waiting for window {}",
                plan.window.saturating_sub(1),
                plan.wait.as_millis(),
                plan.window
            ),
        )?;
        std::thread::sleep(plan.wait);
    }
    let shown: Vec<String> = knocks.iter().map(ToString::to_string).collect();
    say(
        out,
        format!(
            "knocking for {} at {} ({target}), policy {}, window {}: {}",
            profile.user.name,
            gateway.name,
            entry.policy,
            plan.window,
            shown.join(" ")
        ),
    )?;
    let mut output_error = None;
    send_sequence(target, &knocks, delay, |k| {
        if args.verbose && output_error.is_none() {
            output_error = report(out, k, target).err();
        }
    })?;
    match output_error {
        Some(err) => Err(OpenCmdError::Output(err)),
        None => Ok(()),
    }
}

fn report(out: &mut dyn Write, knock: &KnockStep, target: IpAddr) -> io::Result<()> {
    writeln!(out, "knocked {knock} on {target}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn knocks_in_the_current_window_when_there_is_time() {
        let now = Duration::from_millis(1_800_000_003_500);
        let p = plan(now, 30, Duration::from_millis(60));
        assert_eq!(
            p,
            Plan {
                window: 60_000_000,
                wait: Duration::ZERO
            }
        );
    }

    #[test]
    fn waits_for_the_next_window_near_the_end() {
        // 1.5 s left of window 60000000.
        let now = Duration::from_millis(1_800_000_028_500);
        assert_eq!(
            plan(now, 30, Duration::ZERO),
            Plan {
                window: 60_000_001,
                wait: Duration::from_millis(1500)
            }
        );
        // 3 s left, but the knocks take 1.5 s: not enough either.
        let now = Duration::from_secs(1_800_000_027);
        assert_eq!(plan(now, 30, 3 * S / 2).wait, 3 * S);
        assert_eq!(plan(now, 30, S / 2).wait, Duration::ZERO);
        // Exactly on a boundary: the whole new window is ahead.
        assert_eq!(
            plan(Duration::from_secs(1_800_000_030), 30, S).window,
            60_000_001
        );
        assert_eq!(
            plan(Duration::from_secs(1_800_000_030), 30, S).wait,
            Duration::ZERO
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let p = plan(Duration::from_secs(u64::MAX), u32::MAX, Duration::MAX);
        assert!(p.window >= window_index(u64::MAX, u32::MAX));
        // A 1 s window is always too short: knock at the start of the next.
        let p = plan(Duration::ZERO, 0, Duration::ZERO);
        assert_eq!((p.window, p.wait), (1, S));
    }
}
