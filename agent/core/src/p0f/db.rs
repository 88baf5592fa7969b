//! The p0f v3 database: a line parser for `p0f.fp` that keeps the `[tcp:request]`
//! signatures and checks the rest only for shape (format: section 5 of p0f's README).

use std::str::FromStr;

use super::sig::{IpVersion, Layout, Quirk, Quirks};

/// Parsed p0f v3 TCP SYN signatures, in file order.
#[derive(Debug, Clone, Default)]
pub struct Database {
    pub(super) labels: Vec<Label>,
    pub(super) sigs: Vec<Sig>,
}

/// A `label = s|g:class:name:flavor` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Label {
    /// Name, then a space and the flavor when there is one.
    pub(super) text: String,
    pub(super) name_len: usize,
    /// `None` for userland tools (class `!`).
    pub(super) class: Option<String>,
    pub(super) generic: bool,
}

pub(super) static NO_LABEL: Label = Label {
    text: String::new(),
    name_len: 0,
    class: None,
    generic: true,
};

/// One `sig = ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass` line.
#[derive(Debug, Clone)]
pub(super) struct Sig {
    pub(super) label: usize,
    pub(super) line: usize,
    /// `None` for `*`.
    pub(super) version: Option<IpVersion>,
    pub(super) ittl: u8,
    /// `ittl-`: the sender randomises its TTL.
    pub(super) bad_ttl: bool,
    pub(super) olen: u8,
    pub(super) mss: Option<u16>,
    pub(super) window: Window,
    pub(super) wscale: Option<u8>,
    pub(super) layout: Layout,
    pub(super) quirks: Quirks,
    /// `None` for `*`; otherwise whether the SYN carries data.
    pub(super) payload: Option<bool>,
}

/// How a signature constrains the TCP window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Window {
    Any,
    Value(u16),
    /// `%N`: a multiple of N.
    Mod(u16),
    /// `mss*N`.
    Mss(u16),
    /// `mtu*N`.
    Mtu(u16),
}

/// A line of the database that does not parse; the caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct DbError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub kind: DbErrorKind,
}

/// Why a database line does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbErrorKind {
    #[error("expected \"key = value\", a [section] or a ; comment")]
    Syntax,
    #[error("unknown section \"{0}\"")]
    UnknownSection(String),
    #[error("unknown key \"{0}\"")]
    UnknownKey(String),
    #[error("misplaced \"{0}\"")]
    Misplaced(String),
    #[error("unknown class \"{0}\"")]
    UnknownClass(String),
    #[error("unknown quirk \"{0}\"")]
    UnknownQuirk(String),
    #[error("unknown tcp option \"{0}\"")]
    UnknownOption(String),
    #[error("quirk \"{quirk}\" is not valid for {version}")]
    QuirkVersion {
        quirk: &'static str,
        version: IpVersion,
    },
    #[error("expected 8 fields separated by ':', found {0}")]
    FieldCount(usize),
    #[error("bad {field} \"{value}\"")]
    Bad { field: &'static str, value: String },
}

fn bad(field: &'static str, value: &str) -> DbErrorKind {
    DbErrorKind::Bad {
        field,
        value: value.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Preamble,
    TcpRequest,
    Skipped,
}

impl Database {
    /// Parse the text of a p0f v3 `p0f.fp`. Strict like p0f: an unknown key, section,
    /// class, TCP option or quirk is an error, as is a malformed `[tcp:request]` line.
    pub fn parse(text: &str) -> Result<Self, DbError> {
        let mut db = Database::default();
        let mut classes: Vec<&str> = Vec::new();
        let mut section = Section::Preamble;
        let mut label: Option<usize> = None;
        for (i, line) in text.lines().enumerate() {
            let at = |kind| DbError { line: i + 1, kind };
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                section = match line {
                    "[tcp:request]" => Section::TcpRequest,
                    "[tcp:response]" | "[mtu]" | "[http:request]" | "[http:response]" => {
                        Section::Skipped
                    }
                    _ => return Err(at(DbErrorKind::UnknownSection(line.to_owned()))),
                };
                label = None;
                continue;
            }
            let (key, value) = line.split_once('=').ok_or(at(DbErrorKind::Syntax))?;
            let (key, value) = (key.trim_end(), value.trim_start());
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') {
                return Err(at(DbErrorKind::Syntax));
            }
            let misplaced = |key: &str| at(DbErrorKind::Misplaced(key.to_owned()));
            match (key, section) {
                ("classes", Section::Preamble) => {
                    classes = value.split(',').map(str::trim).collect();
                    if let Some(c) = classes.iter().find(|c| !is_word(c)) {
                        return Err(at(bad("class", c)));
                    }
                }
                ("classes", _) => return Err(misplaced("classes")),
                ("label" | "sys" | "sig" | "ua_os", Section::Skipped) => {}
                ("label", Section::TcpRequest) => {
                    db.labels.push(parse_label(value, &classes).map_err(at)?);
                    label = Some(db.labels.len() - 1);
                }
                ("sys", Section::TcpRequest) if label.is_some() => {}
                ("sig", Section::TcpRequest) => {
                    let label = label.ok_or(misplaced("sig"))?;
                    db.sigs.push(parse_sig(value, label, i + 1).map_err(at)?);
                }
                ("label" | "sys" | "sig" | "ua_os", _) => return Err(misplaced(key)),
                _ => return Err(at(DbErrorKind::UnknownKey(key.to_owned()))),
            }
        }
        Ok(db)
    }

    /// The number of `[tcp:request]` signatures.
    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    /// Whether there are no `[tcp:request]` signatures.
    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    /// Name and flavor of label `id` (`Match::label_id`), e.g. `"Linux 3.11 and newer"`.
    pub fn label_text(&self, id: usize) -> &str {
        self.labels.get(id).map_or("", |l| l.text.as_str())
    }

    /// The OS or tool name of label `id`, e.g. `"Linux"`.
    pub fn label_name(&self, id: usize) -> &str {
        self.labels
            .get(id)
            .and_then(|l| l.text.get(..l.name_len))
            .unwrap_or("")
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `s|g:class:name:flavor`; the flavor may be empty and may contain ':'.
fn parse_label(value: &str, classes: &[&str]) -> Result<Label, DbErrorKind> {
    let mut parts = value.splitn(4, ':');
    let (Some(kind), Some(class), Some(name), Some(flavor)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("label", value));
    };
    let generic = match kind {
        "s" => false,
        "g" => true,
        _ => return Err(bad("label type", kind)),
    };
    let class = match class {
        "!" => None,
        _ => match classes.iter().find(|c| c.eq_ignore_ascii_case(class)) {
            Some(c) => Some((*c).to_owned()),
            None => return Err(DbErrorKind::UnknownClass(class.to_owned())),
        },
    };
    let name_ok = |b: u8| b.is_ascii_alphanumeric() || b" ./-_!?()".contains(&b);
    if name.is_empty() || !name.bytes().all(name_ok) {
        return Err(bad("name", name));
    }
    let text = if flavor.is_empty() {
        name.to_owned()
    } else {
        format!("{name} {flavor}")
    };
    Ok(Label {
        text,
        name_len: name.len(),
        class,
        generic,
    })
}

fn parse_sig(value: &str, label: usize, line: usize) -> Result<Sig, DbErrorKind> {
    let mut fields = [""; 8];
    let mut count = 0;
    for field in value.split(':') {
        if let Some(slot) = fields.get_mut(count) {
            *slot = field;
        }
        count += 1;
    }
    if count != fields.len() {
        return Err(DbErrorKind::FieldCount(count));
    }
    let [ver, ittl, olen, mss, window, olayout, quirks, pclass] = fields;
    let version = match ver {
        "4" => Some(IpVersion::V4),
        "6" => Some(IpVersion::V6),
        "*" => None,
        _ => return Err(bad("ip version", ver)),
    };
    let (ittl, bad_ttl) = parse_ittl(ittl).ok_or_else(|| bad("ittl", ittl))?;
    let (window, scale) = window.split_once(',').ok_or_else(|| bad("wsize", window))?;
    Ok(Sig {
        label,
        line,
        version,
        ittl,
        bad_ttl,
        olen: num(olen).ok_or_else(|| bad("olen", olen))?,
        mss: wild(mss).ok_or_else(|| bad("mss", mss))?,
        window: parse_window(window).ok_or_else(|| bad("wsize", window))?,
        wscale: wild(scale).ok_or_else(|| bad("scale", scale))?,
        layout: parse_layout(olayout)?,
        quirks: parse_quirks(quirks, version)?,
        payload: match pclass {
            "*" => None,
            "0" => Some(false),
            "+" => Some(true),
            _ => return Err(bad("pclass", pclass)),
        },
    })
}

/// A decimal number of digits only (no sign, no spaces), in range for `T`.
fn num<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `*` (any) or a number.
fn wild<T: FromStr>(s: &str) -> Option<Option<T>> {
    if s == "*" {
        Some(None)
    } else {
        num(s).map(Some)
    }
}

/// `64`, `64-` (randomised TTL) or `64+3` (TTL plus distance); 1 to 255.
fn parse_ittl(s: &str) -> Option<(u8, bool)> {
    let (ttl, bad_ttl) = if let Some(base) = s.strip_suffix('-') {
        (num(base)?, true)
    } else if let Some((base, dist)) = s.split_once('+') {
        (num::<u8>(base)?.checked_add(num(dist)?)?, false)
    } else {
        (num(s)?, false)
    };
    (ttl >= 1).then_some((ttl, bad_ttl))
}

fn parse_window(s: &str) -> Option<Window> {
    let multiplier = |n: &str| num(n).filter(|m| (1..=1000).contains(m));
    Some(if s == "*" {
        Window::Any
    } else if let Some(n) = s.strip_prefix('%') {
        Window::Mod(num(n).filter(|&m| m >= 2)?)
    } else if let Some(n) = s.strip_prefix("mss*") {
        Window::Mss(multiplier(n)?)
    } else if let Some(n) = s.strip_prefix("mtu*") {
        Window::Mtu(multiplier(n)?)
    } else {
        Window::Value(num(s)?)
    })
}

fn parse_layout(s: &str) -> Result<Layout, DbErrorKind> {
    let mut layout = Layout::default();
    if s.is_empty() {
        return Ok(layout);
    }
    let mut after_eol = false;
    for opt in s.split(',') {
        if after_eol {
            return Err(bad("olayout (eol must come last)", s));
        }
        let kind = match opt {
            "nop" => 1,
            "mss" => 2,
            "ws" => 3,
            "sok" => 4,
            "sack" => 5,
            "ts" => 8,
            _ => {
                if let Some(pad) = opt.strip_prefix("eol+") {
                    layout.eol_pad = num(pad).ok_or_else(|| bad("eol padding", pad))?;
                    after_eol = true;
                    0
                } else if let Some(kind) = opt.strip_prefix('?') {
                    num(kind).ok_or_else(|| bad("option kind", kind))?
                } else {
                    return Err(DbErrorKind::UnknownOption(opt.to_owned()));
                }
            }
        };
        if !layout.push(kind) {
            return Err(bad("olayout (too many options)", s));
        }
    }
    Ok(layout)
}

fn parse_quirks(s: &str, version: Option<IpVersion>) -> Result<Quirks, DbErrorKind> {
    let mut quirks = Quirks::default();
    for name in s.split(',').filter(|_| !s.is_empty()) {
        let quirk =
            Quirk::from_name(name).ok_or_else(|| DbErrorKind::UnknownQuirk(name.to_owned()))?;
        if let (Some(only), Some(version)) = (quirk.only_for(), version)
            && only != version
        {
            return Err(DbErrorKind::QuirkVersion {
                quirk: quirk.name(),
                version,
            });
        }
        quirks.set(quirk, true);
    }
    Ok(quirks)
}
