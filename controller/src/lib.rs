//! knockgate controller library: the store (users, agents, policies, grants,
//! audit trail on SQLite or PostgreSQL), the PKI (internal CA, mTLS
//! identities), and the gRPC server agents and knockadm talk to: mutual TLS
//! ([`tls`]), authorization by certificate identity ([`authz`]), the
//! services ([`service`]) and fan-out of changes to live agent streams
//! ([`fanout`]). Entry point: [`server::serve`].
#![forbid(unsafe_code)]

pub mod applied;
pub mod authz;
pub mod cli;
pub mod convert;
pub mod datadir;
pub mod desired;
pub mod error;
pub mod event;
pub mod fanout;
pub mod health;
pub mod metrics;
pub mod name;
pub mod pki;
pub mod policy;
pub mod secrets;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod trail;

pub use server::{Controller, serve};
