//! The profile's `[[gateway.policy]]` entries: the policies admitting the user at
//! a gateway, with what each opens and the methods that open it there, copied
//! from the controller so `knocker open` can choose the access to ask for.
//!
//! Like the rotating entries, they are kept as the controller sent them (plain
//! strings) and checked only when used.

use knockgate_proto::Access;
use serde::{Deserialize, Serialize};

/// One `[[gateway.policy]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileGatewayPolicy {
    /// The policy's name.
    pub name: String,
    /// What it opens: `tcp/22`, `udp/51820`.
    #[serde(default)]
    pub open: Vec<String>,
    /// The methods that open it: `spa`, `fwknop`, `sequence`, `rotating`, `otk`.
    #[serde(default)]
    pub methods: Vec<String>,
}

impl ProfileGatewayPolicy {
    /// Whether `method` (a `knocker open --method` word) opens this policy.
    #[must_use]
    pub fn allows(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// What it opens, sorted and deduplicated, or the first entry that is not
    /// `tcp/PORT` or `udp/PORT`.
    ///
    /// # Errors
    /// The entry that does not parse, and why.
    pub fn access(&self) -> Result<Vec<Access>, String> {
        let mut access = self
            .open
            .iter()
            .map(|a| {
                a.parse::<Access>()
                    .map_err(|err| format!("open entry {a:?}: {err}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        access.sort_unstable();
        access.dedup();
        Ok(access)
    }

    /// `ssh (tcp/22)`, `web (tcp/80, tcp/443)`: how errors name the policy.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.open.join(", "))
    }
}
