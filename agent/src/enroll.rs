//! `enroll`: get the agent's certificate from the controller with a one-time token and
//! point the config file at the controller.

use std::path::Path;

use knockgate_agent::control::enroll::{self, EnrollError};
use knockgate_agent::control::tls::parse_fingerprint;
use knockgate_agent_core::config::Config;

use crate::{EXIT_UNAVAILABLE, EXIT_USAGE, Failure};

pub fn enroll(config_path: &Path, url: &str, token: &str, ca_sha256: &str) -> Result<(), Failure> {
    let pin = parse_fingerprint(ca_sha256).map_err(Failure::usage)?;
    let text = std::fs::read_to_string(config_path).map_err(|e| {
        Failure::usage(format!("cannot read config {}: {e}", config_path.display()))
    })?;
    let config = Config::parse(&text)
        .map_err(|e| Failure::usage(format!("{}: {e}", config_path.display())))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::runtime(anyhow::Error::new(e).context("failed to start a runtime"))
        })?;
    let enrolled = rt
        .block_on(enroll::enroll(url, token, pin, &config.agent.name))
        .map_err(|e| {
            let code = match e {
                EnrollError::BadUrl { .. } => EXIT_USAGE,
                EnrollError::Unreachable { .. } => EXIT_UNAVAILABLE,
                _ => 1,
            };
            Failure::new(code, e.to_string())
        })?;
    let state_dir = &config.agent.state_dir;
    enroll::write_credentials(state_dir, &enrolled).map_err(|e| Failure::new(1, e.to_string()))?;
    match &config.controller {
        None => {
            enroll::add_controller_section(config_path, url).map_err(|e| {
                Failure::new(
                    1,
                    format!("cannot add [controller] to {}: {e}", config_path.display()),
                )
            })?;
            println!(
                "added [controller] url = {url:?} to {}",
                config_path.display()
            );
        }
        Some(c) if !c.urls.iter().any(|u| u == url) => println!(
            "note: {} keeps [controller] url = {:?}",
            config_path.display(),
            c.urls
        ),
        Some(_) => {}
    }
    if enrolled.agent_name != config.agent.name {
        println!(
            "note: the controller enrolled this agent as {:?}: set agent.name = {:?} in {} \
             (the agent refuses to run until it matches)",
            enrolled.agent_name,
            enrolled.agent_name,
            config_path.display()
        );
    }
    println!(
        "enrolled as agent {:?} with {url}; key and certificates in {}",
        enrolled.agent_name,
        state_dir.display()
    );
    Ok(())
}
