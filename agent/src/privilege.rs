//! Does this process hold the capabilities the agent needs? Read from /proc so the answer
//! is exact for root, file capabilities and ambient capabilities alike.

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// The capabilities the agent needs and lacks, by name (empty when all are held).
pub fn missing() -> Vec<&'static str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let mut out = Vec::new();
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        out.push("CAP_NET_ADMIN");
    }
    if eff & (1 << CAP_NET_RAW) == 0 {
        out.push("CAP_NET_RAW");
    }
    out
}
