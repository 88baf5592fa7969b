//! Output for people and for scripts: plain aligned tables, `key: value`
//! blocks, times as RFC 3339 UTC (or "never"), durations as `30s`/`5m`; and
//! JSON (pretty for one answer, one object per line for a stream).

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;
use serde::Serialize;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    Table,
    /// JSON for scripts
    Json,
}

/// Gap between two columns.
const GAP: &str = "  ";

/// A table: a header row and rows of cells, rendered with each column as
/// wide as its widest cell and no trailing spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    #[must_use]
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn push(&mut self, row: Vec<String>) {
        let mut row = row;
        row.resize(self.headers.len(), String::new());
        self.rows.push(row.iter().map(|c| cell(c)).collect());
    }

    /// Column widths for the header and rows (in characters).
    #[must_use]
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        widths
    }

    /// Writes the header and every row.
    ///
    /// # Errors
    /// The writer's error.
    pub fn render(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths = Vec::new();
        self.render_with(out, &mut widths, true)
    }

    /// Writes the rows (and the header if `header`) with columns at least
    /// `widths` wide, then widens `widths` to what was printed; a stream of
    /// batches (`audit --follow`) stays aligned as far as it can.
    ///
    /// # Errors
    /// The writer's error.
    pub fn render_with(
        &self,
        out: &mut dyn Write,
        widths: &mut Vec<usize>,
        header: bool,
    ) -> io::Result<()> {
        let own = self.widths();
        widths.resize(own.len(), 0);
        for (w, o) in widths.iter_mut().zip(own) {
            *w = (*w).max(o);
        }
        if header {
            write_row(out, &self.headers, widths)?;
        }
        for row in &self.rows {
            write_row(out, row, widths)?;
        }
        Ok(())
    }
}

fn write_row(out: &mut dyn Write, row: &[String], widths: &[usize]) -> io::Result<()> {
    let mut line = String::new();
    for (i, (c, w)) in row.iter().zip(widths).enumerate() {
        if i > 0 {
            line.push_str(GAP);
        }
        line.push_str(c);
        if i + 1 < row.len() {
            line.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(c.chars().count()),
            ));
        }
    }
    writeln!(out, "{}", line.trim_end())
}

/// A cell as printed: "-" when empty, control characters shown escaped so
/// server-supplied text cannot break the layout or the terminal.
#[must_use]
pub fn cell(text: &str) -> String {
    if text.is_empty() {
        return "-".to_owned();
    }
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Writes `key: value` lines with the values aligned.
///
/// # Errors
/// The writer's error.
pub fn write_fields(out: &mut dyn Write, fields: &[(&str, String)]) -> io::Result<()> {
    let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (key, value) in fields {
        let label = format!("{key}:");
        writeln!(out, "{label:<width$} {}", cell(value))?;
    }
    Ok(())
}

/// Writes one JSON value, pretty-printed, and a newline.
///
/// # Errors
/// The writer's error.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// Writes one JSON value on one line (for streams).
///
/// # Errors
/// The writer's error.
pub fn write_json_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    writeln!(out)?;
    out.flush()
}

/// A wire time (unix ms) as RFC 3339 UTC to the second, or `None` for 0.
#[must_use]
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    if unix_ms <= 0 {
        return None;
    }
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms.unsigned_abs());
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

/// A wire time for a table: RFC 3339 UTC, or "never" for 0.
#[must_use]
pub fn time_cell(unix_ms: i64) -> String {
    rfc3339(unix_ms).unwrap_or_else(|| "never".to_owned())
}

/// Seconds as a short duration: `30s`, `5m`, `1h 30m`; `0` as "-".
#[must_use]
pub fn secs_cell(secs: u32) -> String {
    if secs == 0 {
        return "-".to_owned();
    }
    humantime::format_duration(Duration::from_secs(u64::from(secs))).to_string()
}

/// How long from `now` until `unix_ms`, for "expires in 59m 59s".
#[must_use]
pub fn until(unix_ms: i64, now: SystemTime) -> String {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let left = unix_ms.saturating_sub(now_ms).max(0).unsigned_abs() / 1000;
    humantime::format_duration(Duration::from_secs(left)).to_string()
}

/// A yes/no cell.
#[must_use]
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        table.render(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn columns_align_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "LABELS", "CONNECTED"]);
        t.push(vec!["gw1".into(), "role=edge".into(), "yes".into()]);
        t.push(vec!["edge-long".into(), String::new(), "no".into()]);
        assert_eq!(
            render(&t),
            "NAME       LABELS     CONNECTED\n\
             gw1        role=edge  yes\n\
             edge-long  -          no\n"
        );
    }

    #[test]
    fn header_only_and_short_rows() {
        let t = Table::new(&["ID", "KIND"]);
        assert_eq!(render(&t), "ID  KIND\n");
        let mut t = Table::new(&["A", "B", "C"]);
        t.push(vec!["x".into()]);
        assert_eq!(render(&t), "A  B  C\nx  -  -\n");
    }

    #[test]
    fn wide_characters_count_once_and_controls_are_escaped() {
        let mut t = Table::new(&["USER", "SRC"]);
        t.push(vec!["zoë".into(), "a\nb".into()]);
        t.push(vec!["bob".into(), "x".into()]);
        assert_eq!(render(&t), "USER  SRC\nzoë   a\\nb\nbob   x\n");
    }

    #[test]
    fn streamed_batches_keep_widths() {
        let mut widths = Vec::new();
        let mut out = Vec::new();
        let mut first = Table::new(&["ID", "KIND"]);
        first.push(vec!["1".into(), "spa.accepted".into()]);
        first.render_with(&mut out, &mut widths, true).unwrap();
        let mut second = Table::new(&["ID", "KIND"]);
        second.push(vec!["2".into(), "x".into()]);
        second.render_with(&mut out, &mut widths, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID  KIND\n1   spa.accepted\n2   x\n"
        );
    }

    #[test]
    fn fields_align() {
        let mut out = Vec::new();
        write_fields(
            &mut out,
            &[
                ("name", "alice".into()),
                ("key version", "2".into()),
                ("groups", String::new()),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "name:        alice\nkey version: 2\ngroups:      -\n"
        );
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(time_cell(0), "never");
        assert_eq!(time_cell(-5), "never");
        assert_eq!(time_cell(1_748_779_200_123), "2025-06-01T12:00:00Z");
        assert_eq!(rfc3339(1_000), Some("1970-01-01T00:00:01Z".into()));
        assert_eq!(secs_cell(30), "30s");
        assert_eq!(secs_cell(300), "5m");
        assert_eq!(secs_cell(5400), "1h 30m");
        assert_eq!(secs_cell(0), "-");
        let now = UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(until(3_700_000, now), "1h");
        assert_eq!(until(0, now), "0s");
    }

    #[test]
    fn json_forms() {
        let mut out = Vec::new();
        write_json_line(&mut out, &serde_json::json!({"a": 1, "b": [1, 2]})).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"a\":1,\"b\":[1,2]}\n");
        let mut out = Vec::new();
        write_json(&mut out, &serde_json::json!([])).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "[]\n");
    }
}
