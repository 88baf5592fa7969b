//! The fwknop side of a profile: the rc file written beside it
//! (`FILE.fwknoprc`, one stanza per gateway for `fwknop --rc-file FILE -n
//! GATEWAY`), and gateway addresses split into host and port as both
//! fwknop's `SPA_SERVER`/`SPA_SERVER_PORT` and `knocker open` need them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use knockgate_proto::scope::fwknop_rc_base64;
use zeroize::Zeroizing;

use super::Profile;

/// Splits a gateway address into host and optional port: `203.0.113.7`,
/// `gw.example.net:62201`, `[2001:db8::1]:62201`, or a bare IPv6 address.
#[must_use]
pub fn split_address(address: &str) -> (&str, Option<u16>) {
    let address = address.trim();
    if let Ok(sock) = address.parse::<SocketAddr>() {
        let host = match sock {
            SocketAddr::V4(_) => address.rsplit_once(':').map_or(address, |(h, _)| h),
            SocketAddr::V6(_) => address
                .rsplit_once("]:")
                .map_or(address, |(h, _)| h.trim_start_matches('[')),
        };
        return (host, Some(sock.port()));
    }
    match address.split_once(':') {
        // Exactly one colon and digits after it: host:port.
        Some((host, port)) if !port.contains(':') => match port.parse::<u16>() {
            Ok(port) if port != 0 => (host, Some(port)),
            _ => (address, None),
        },
        _ => (address.trim_start_matches('[').trim_end_matches(']'), None),
    }
}

/// The rc file written beside a profile: `FILE.fwknoprc`.
#[must_use]
pub fn fwknoprc_path(profile: &Path) -> PathBuf {
    let mut name = profile.as_os_str().to_owned();
    name.push(".fwknoprc");
    PathBuf::from(name)
}

/// The fwknop rc stanzas, one per gateway, for `fwknop --rc-file FILE -n GATEWAY -a
/// YOUR_ADDRESS`. Each stanza carries the keys derived for that gateway alone, so a
/// packet sniffed on its way to one gateway is refused at every other. No stanza names
/// the address to open: `ALLOW_IP source` would let anyone who copies the packet resend
/// it from their own address, so the user names theirs with `-a` (or `-R`, or `-s`
/// knowingly). `ACCESS` is what the first policy admitting fwknop there opens; the others
/// are listed in a comment with the `-A` that asks for them, and a gateway where no
/// known policy admits fwknop gets no `ACCESS` line (nothing is guessed).
#[must_use]
pub fn render_fwknoprc(profile: &Profile) -> Zeroizing<String> {
    let user = &profile.user;
    let mut text = Zeroizing::new(format!(
        "# fwknop client stanzas for knockgate user {}: keep this file secret.\n\
         # Use: fwknop --rc-file THIS_FILE -n GATEWAY -a YOUR_ADDRESS [-A PROTO/PORT].\n\
         # Each gateway has keys of its own.\n",
        user.name
    ));
    if profile.gateways.is_empty() {
        text.push_str("# no gateway admits this user yet\n");
    }
    let digest = user
        .fwknop_hmac
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or("sha256")
        .to_ascii_uppercase();
    for gw in &profile.gateways {
        let keys = match profile.gateway_fwknop_keys(&gw.name, Path::new("profile")) {
            Ok(keys) => keys,
            Err(err) => {
                let _ = write!(text, "\n# [{}]: no fwknop keys ({err})\n", gw.name);
                continue;
            }
        };
        let (key, hmac_key) = fwknop_rc_base64(&keys);
        let (host, port) = split_address(&gw.address);
        let _ = write!(text, "\n[{}]\nSPA_SERVER {host}\n", gw.name);
        if let Some(port) = port {
            let _ = writeln!(text, "SPA_SERVER_PORT {port}");
        }
        let _ = write!(
            text,
            "SPOOF_USER {}\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\nUSE_HMAC Y\n\
             HMAC_DIGEST_TYPE {digest}\n",
            user.name,
            key.as_str(),
            hmac_key.as_str(),
        );
        let mut fwknop = gw.policies.iter().filter(|p| p.allows("fwknop"));
        match fwknop.next() {
            Some(first) => {
                let _ = writeln!(text, "ACCESS {}", first.open.join(","));
                for other in fwknop {
                    let _ = writeln!(
                        text,
                        "# also here, policy {}: -A {}",
                        other.name,
                        other.open.join(",")
                    );
                }
            }
            None => text.push_str(
                "# no policy known here admits fwknop: name the access with -A PROTO/PORT\n",
            ),
        }
    }
    text
}
