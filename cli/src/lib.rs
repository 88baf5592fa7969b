//! knockgate's command-line tools as a library: `knocker` (the user client) and
//! `knockadm` (the admin CLI) are thin binaries over these modules.
//!
//! - [`knock`]: sending knocks over real sockets ([`send_knock`], [`send_sequence`]).
//! - [`icmp`]: echo-request bytes and the Internet checksum.
//! - [`resolve`]: HOST to one address, honouring `-4`/`-6`.
//! - [`spa`]: native SPA packets: sealing ([`build_spa`]) and sending ([`send_spa`]).
//! - [`keyfile`]: reading and writing native SPA key files.
//! - [`profile`]: the knocker profile knockadm writes and `knocker open` reads.
//! - [`otk`]: the one-time key counter kept beside a profile.
//! - [`durable`]: the one atomic, synced replacement of such small files.
//! - [`cmd`]: one module per `knocker` subcommand (clap arguments and `run`).
//! - [`admin`]: `knockadm`: the controller connection, one module per noun,
//!   and table/JSON output.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod cmd;
pub mod durable;
pub mod icmp;
pub mod keyfile;
pub mod knock;
pub mod otk;
pub mod profile;
pub mod resolve;
pub mod spa;

pub use keyfile::{KeyFileError, KeyTextError, parse_key_text, read_key_file, write_key_file};
pub use knock::{KnockError, send_knock, send_sequence};
pub use resolve::{Family, ResolveError, resolve_host};
pub use spa::{BuildSpaError, DEFAULT_SPA_PORT, SendSpaError, build_spa, send_spa};
