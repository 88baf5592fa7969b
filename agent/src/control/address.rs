//! The address users knock on, as the agent sees it, for the controller's Hello: the
//! first global address of the first capture interface, from `ip -j addr show dev`.

use serde_json::Value;

/// The first global IPv4 address of `iface`, else its first global IPv6 address, else "".
pub async fn of_interface(iface: &str) -> String {
    let out = tokio::process::Command::new("ip")
        .args(["-j", "addr", "show", "dev", iface])
        .kill_on_drop(true)
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => first_global(&o.stdout).unwrap_or_default(),
        Ok(o) => {
            tracing::debug!(%iface, status = %o.status, "ip addr failed; reporting no address");
            String::new()
        }
        Err(e) => {
            tracing::debug!(%iface, error = %e, "cannot run ip; reporting no address");
            String::new()
        }
    }
}

/// Parse `ip -j addr` output: IPv4 first, then IPv6, global scope only.
pub fn first_global(json: &[u8]) -> Option<String> {
    let links: Value = serde_json::from_slice(json).ok()?;
    let infos: Vec<&Value> = links
        .as_array()?
        .iter()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
        .filter(|a| a.get("scope").and_then(Value::as_str) == Some("global"))
        .collect();
    ["inet", "inet6"].iter().find_map(|family| {
        infos
            .iter()
            .find(|a| a.get("family").and_then(Value::as_str) == Some(family))
            .and_then(|a| a.get("local")?.as_str())
            .map(str::to_string)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_global_ipv4_then_ipv6() {
        let out = br#"[{"ifindex":2,"ifname":"eth0","addr_info":[
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
            {"family":"inet6","local":"2001:db8::5","prefixlen":64,"scope":"global"},
            {"family":"inet","local":"192.0.2.7","prefixlen":24,"scope":"global"},
            {"family":"inet","local":"192.0.2.8","prefixlen":24,"scope":"global"}]}]"#;
        assert_eq!(first_global(out).as_deref(), Some("192.0.2.7"));
        let v6 = br#"[{"addr_info":[{"family":"inet6","local":"fe80::1","scope":"link"},
            {"family":"inet6","local":"2001:db8::5","scope":"global"}]}]"#;
        assert_eq!(first_global(v6).as_deref(), Some("2001:db8::5"));
        assert_eq!(first_global(br#"[{"addr_info":[]}]"#), None);
        assert_eq!(first_global(b"not json"), None);
    }
}
