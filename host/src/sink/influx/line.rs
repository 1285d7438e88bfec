//! InfluxDB line protocol: one sample, one line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Characters escaped in a measurement name.
pub(super) const MEASUREMENT_SPECIALS: &[u8] = b", ";
/// Characters escaped in tag keys, tag values and field keys.
pub(super) const KEY_SPECIALS: &[u8] = b",= ";
/// InfluxDB stores nanoseconds in an i64: milliseconds beyond this overflow.
pub(super) const MAX_TS_MS: i64 = i64::MAX / 1_000_000;

/// Why a sample was not turned into a line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Skip {
    /// No field is finite.
    NonFinite,
    /// A name or the time cannot be written (see [`escape_into`]).
    Unwritable,
}

/// The config's extra tags, escaped, split around where `symbol` sorts, so
/// that every line lists its tags sorted by key (InfluxDB's advice: it
/// saves the server sorting them).
#[derive(Debug, Default)]
pub(super) struct TagSet {
    /// `,key=value` for keys before `symbol`.
    pub(super) before: String,
    /// `,key=value` for keys after `symbol`.
    pub(super) after: String,
}

impl TagSet {
    /// From validated tags.
    pub(super) fn new(tags: &BTreeMap<String, String>) -> Self {
        let mut set = TagSet::default();
        for (key, value) in tags {
            let out = if key.as_str() < "symbol" { &mut set.before } else { &mut set.after };
            out.push(',');
            escape_into(out, key, KEY_SPECIALS);
            out.push('=');
            escape_into(out, value, KEY_SPECIALS);
        }
        set
    }
}

/// Appends one sample as a line of line protocol:
/// `measurement,tag=value,… field=value,… time_ms\n`. Non-finite fields
/// are left out. On a skip, `out` is left as it was.
pub(super) fn push_line(
    out: &mut String,
    tags: &TagSet,
    series: &str,
    fields: &[String],
    symbol: &str,
    ts: i64,
    values: &[f64],
) -> Result<(), Skip> {
    debug_assert_eq!(fields.len(), values.len(), "series `{series}`: one value per field");
    let start = out.len();
    let result = push_line_unchecked(out, tags, series, fields, symbol, ts, values);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Whether line protocol can carry `series`, `fields` and `symbol` (the
/// names [`push_line`] checks), whatever the values and time.
pub(super) fn names_writable(series: &str, fields: &[String], symbol: &str) -> bool {
    let mut scratch = String::new();
    let ones = vec![1.0; fields.len()];
    push_line(&mut scratch, &TagSet::default(), series, fields, symbol, 0, &ones).is_ok()
}

fn push_line_unchecked(
    out: &mut String,
    tags: &TagSet,
    series: &str,
    fields: &[String],
    symbol: &str,
    ts: i64,
    values: &[f64],
) -> Result<(), Skip> {
    // A line starting with `#` is a comment, and there is no escaping it.
    if series.is_empty() || series.starts_with('#') || !(-MAX_TS_MS..=MAX_TS_MS).contains(&ts) {
        return Err(Skip::Unwritable);
    }
    if !escape_into(out, series, MEASUREMENT_SPECIALS) {
        return Err(Skip::Unwritable);
    }
    out.push_str(&tags.before);
    // An empty tag value cannot be written; a missing tag reads as empty.
    if !symbol.is_empty() {
        out.push_str(",symbol=");
        if !escape_into(out, symbol, KEY_SPECIALS) {
            return Err(Skip::Unwritable);
        }
    }
    out.push_str(&tags.after);
    let mut separator = ' ';
    for (key, &value) in fields.iter().zip(values) {
        if !value.is_finite() {
            continue;
        }
        out.push(separator);
        separator = ',';
        if key.is_empty() || !escape_into(out, key, KEY_SPECIALS) {
            return Err(Skip::Unwritable);
        }
        // `{:?}` is the shortest text that reads back to the same bits, in
        // exponent form for very large and small values (`1e300`, not 301
        // digits); InfluxDB and VictoriaMetrics both parse exponents.
        // Without an `i` suffix a number is a float field.
        write!(out, "={value:?}").expect("writing to a String cannot fail");
    }
    if separator == ' ' {
        return Err(Skip::NonFinite);
    }
    writeln!(out, " {ts}").expect("writing to a String cannot fail");
    Ok(())
}

/// Appends `s` with each of `specials` escaped by a backslash. Returns
/// false (having appended part of it) when `s` cannot be written the same
/// way to every server: a line break ends the line whatever the escaping,
/// and a backslash at the end or before a special character is read
/// differently by InfluxDB 1.x (which keeps `\\` as two) and 2.x (one).
/// Other backslashes are literal in both.
pub(super) fn escape_into(out: &mut String, s: &str, specials: &[u8]) -> bool {
    let needs_care = |b: &u8| specials.contains(b) || matches!(b, b'\\' | b'\n' | b'\r');
    let bytes = s.as_bytes();
    if !bytes.iter().any(needs_care) {
        out.push_str(s);
        return true;
    }
    for (i, c) in s.char_indices() {
        match c {
            '\n' | '\r' => return false,
            '\\' if bytes.get(i + 1).is_none_or(|next| specials.contains(next)) => return false,
            _ if c.is_ascii() && specials.contains(&(c as u8)) => out.push('\\'),
            _ => {}
        }
        out.push(c);
    }
    true
}
