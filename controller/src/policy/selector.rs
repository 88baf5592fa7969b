//! Agent label selectors (`role=edge,site=par`) and the label syntax they
//! share with `AddAgent`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest label key or value.
const MAX_LABEL_LEN: usize = 63;

/// An agent label selector: every `key=value` must match; empty matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(BTreeMap<String, String>);

impl Selector {
    /// Whether an agent with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut terms = BTreeMap::new();
        if s.is_empty() {
            return Ok(Self(terms));
        }
        for term in s.split(',') {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| format!("{term:?} is not key=value"))?;
            validate_label(k, v)?;
            if terms.insert(k.to_owned(), v.to_owned()).is_some() {
                return Err(format!("key {k:?} appears twice"));
            }
        }
        Ok(Self(terms))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Checks an agent label: key and value are 1 to 63 characters from
/// `A-Z a-z 0-9 . _ / -`, so `k=v,k=v` selectors stay unambiguous.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_LABEL_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    };
    if !ok(key) {
        return Err(format!(
            "label key {key:?} must be 1 to 63 characters from A-Z a-z 0-9 . _ / -"
        ));
    }
    if !ok(value) {
        return Err(format!(
            "label value {value:?} must be 1 to 63 characters from A-Z a-z 0-9 . _ / -"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_every_term() {
        let s: Selector = "role=edge,site=par".parse().unwrap();
        let labels = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        assert!(s.matches(&labels(&[("role", "edge"), ("site", "par"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("role", "edge")])));
        assert!(Selector::default().matches(&labels(&[])));
        assert_eq!(s.to_string(), "role=edge,site=par");
        for bad in ["role", "=x", "role=", "a=b,a=c", "a=b,", "a b=c"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }
}
