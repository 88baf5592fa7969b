//! Fuzz the capture parsers: any byte string, on any link type (and as an NFLOG frame),
//! is a knock (a logged completion) or nothing, never a panic.
#![no_main]

use knockgate_agent_core::packet::{LinkType, nflog, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::RawIp] {
        let _ = parse(link, data);
    }
    let _ = nflog(data);
});
