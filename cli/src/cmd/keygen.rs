//! `knocker keygen [--out FILE [--force]]`: generate a native SPA key and
//! print it, or write it to a file only its owner can read.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use knockgate_proto::spa::{SECRET_LEN, SpaKey};
use rand::TryRng as _;
use rand::rngs::{SysError, SysRng};
use zeroize::Zeroize as _;

use super::{CommandError, EXIT_FAILURE, EXIT_USAGE};
use crate::keyfile::{KeyFileError, write_key_file};

/// Arguments of `knocker keygen`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The key is the base64 of 32 random bytes. Give it to your knockgate admin
(knockadm) and keep the file: 'knocker spa --key-file FILE' reads it.

Examples:
  knocker keygen --out ~/.config/knockgate/alice.key
  knocker keygen > alice.key")]
pub struct KeygenArgs {
    /// Write the key to FILE (created with mode 0600) instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Overwrite FILE if it exists (its mode is reset to 0600)
    #[arg(short, long, requires = "out")]
    pub force: bool,
}

/// Why `knocker keygen` failed.
#[derive(Debug, thiserror::Error)]
pub enum KeygenCmdError {
    /// The operating system's random source failed (exit 1).
    #[error("failed to read randomness from the operating system")]
    Random(#[source] SysError),
    /// The key file exists (exit 64) or could not be written (exit 1).
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// The key could not be written to stdout (exit 1).
    #[error("failed to write to stdout")]
    Output(#[source] io::Error),
}

impl CommandError for KeygenCmdError {
    fn exit_code(&self) -> u8 {
        match self {
            KeygenCmdError::KeyFile(KeyFileError::Exists { .. }) => EXIT_USAGE,
            KeygenCmdError::Random(_) | KeygenCmdError::KeyFile(_) | KeygenCmdError::Output(_) => {
                EXIT_FAILURE
            }
        }
    }
}

impl KeygenArgs {
    /// Generates a key from the operating system's random source and writes
    /// it to `--out`, or as one line to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), KeygenCmdError> {
        let key = generate_key()?;
        match &self.out {
            Some(path) => write_key_file(path, &key, self.force)?,
            None => {
                writeln!(out, "{key}").map_err(KeygenCmdError::Output)?;
                out.flush().map_err(KeygenCmdError::Output)?;
            }
        }
        Ok(())
    }
}

/// A fresh key straight from the OS random source. `SpaKey::generate` wants
/// an infallible rng; reading the secret here turns a failing source into an
/// error instead of a panic.
fn generate_key() -> Result<SpaKey, KeygenCmdError> {
    let mut secret = [0u8; SECRET_LEN];
    SysRng
        .try_fill_bytes(&mut secret)
        .map_err(KeygenCmdError::Random)?;
    let key = SpaKey::from_secret(secret);
    secret.zeroize();
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_one_fresh_key_line() {
        let args = KeygenArgs {
            out: None,
            force: false,
        };
        let mut first = Vec::new();
        args.run(&mut first).unwrap();
        let mut second = Vec::new();
        args.run(&mut second).unwrap();
        let first = String::from_utf8(first).unwrap();
        assert_eq!(first.len(), 45, "44 base64 characters and a newline");
        assert!(first.ends_with('\n'));
        assert!(SpaKey::parse(&first).is_ok());
        assert_ne!(first.as_bytes(), second.as_slice());
    }
}
