//! Fuzz the capture parser: any byte string, on any link type, is a knock or nothing,
//! never a panic.
#![no_main]

use knockgate_agent_core::packet::{LinkType, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for link in [LinkType::Ethernet, LinkType::LinuxSll, LinkType::RawIp] {
        let _ = parse(link, data);
    }
});
