//! Fuzz the agent's config parser and what is derived from a config it accepts: an error
//! or a config, never a panic.
#![no_main]

use knockgate_agent_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.ruleset();
        let _ = config.doors();
        let _ = config.capture_filter(&[]);
        let _ = config.sealed_ports();
        let _ = config.rotating_policies();
    }
});
