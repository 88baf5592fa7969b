//! knockgate controller library: the store (users, agents, policies, grants,
//! audit trail on SQLite or PostgreSQL) and the PKI (internal CA, mTLS
//! identities). The gRPC services build on these.
#![forbid(unsafe_code)]

pub mod name;
pub mod pki;
pub mod store;
