//! Parameters: declared in [`Info`], checked and parsed by [`Params`], and
//! the series a plugin declares on [`Io`].
//!
//! Every error names the plugin and the parameter and says what would be
//! accepted, because the message goes straight back to whoever deployed the
//! plugin.

use std::str::FromStr;

use crate::{Param, ParamDecl, PluginError, SeriesDecl};

/// What a plugin says about itself: see [`crate::StreamFunction::info`].
#[derive(Clone, Debug)]
pub struct Info {
    /// The plugin's name, as in `tickfold plugins`.
    pub name: String,
    /// The plugin's version (use `env!("CARGO_PKG_VERSION")`).
    pub version: String,
    /// A paragraph for `tickfold check` and the docs.
    pub doc: String,
    /// The parameters it accepts.
    pub params: Vec<ParamDecl>,
}

impl Info {
    /// Starts a description.
    pub fn new(name: &str, version: &str) -> Self {
        Info { name: name.into(), version: version.into(), doc: String::new(), params: Vec::new() }
    }

    /// Sets the documentation paragraph.
    pub fn doc(mut self, doc: &str) -> Self {
        self.doc = doc.into();
        self
    }

    /// Declares a parameter; `default: None` makes it required.
    pub fn param(mut self, name: &str, default: Option<&str>, doc: &str) -> Self {
        self.params.push(ParamDecl { name: name.into(), default: default.map(Into::into), doc: doc.into() });
        self
    }
}

/// The series an instance reads and writes, declared in
/// [`crate::StreamFunction::open`].
#[derive(Clone, Debug, Default)]
pub struct Io {
    pub(crate) inputs: Vec<SeriesDecl>,
    pub(crate) outputs: Vec<SeriesDecl>,
}

impl Io {
    /// Declares an input series with the fields the plugin reads from it,
    /// and returns its index (`Batch::series` of its batches).
    pub fn input(&mut self, name: &str, fields: &[&str], doc: &str) -> usize {
        self.inputs.push(decl(name, fields, doc));
        self.inputs.len() - 1
    }

    /// Declares an output series and returns its index for
    /// [`crate::Output::emit`].
    pub fn output(&mut self, name: &str, fields: &[&str], doc: &str) -> usize {
        self.outputs.push(decl(name, fields, doc));
        self.outputs.len() - 1
    }
}

fn decl(name: &str, fields: &[&str], doc: &str) -> SeriesDecl {
    SeriesDecl { name: name.into(), fields: fields.iter().map(|f| f.to_string()).collect(), doc: doc.into() }
}

/// Checked parameters: every name is declared, every declared parameter
/// has a value (given or default).
#[derive(Clone, Debug)]
pub struct Params {
    plugin: String,
    values: Vec<(String, String)>,
}

impl Params {
    /// Checks `given` against the declarations in `info`: unknown names
    /// (with the closest declared name as a hint), repeats and missing
    /// required parameters are errors.
    pub fn check(info: &Info, given: &[Param]) -> Result<Params, PluginError> {
        let mut values = Vec::with_capacity(info.params.len());
        for p in given {
            if !info.params.iter().any(|d| d.name == p.name) {
                let known: Vec<&str> = info.params.iter().map(|d| d.name.as_str()).collect();
                let hint = match closest(&p.name, &known) {
                    Some(near) => format!(" (did you mean `{near}`?)"),
                    None => String::new(),
                };
                return Err(PluginError::BadParams(format!(
                    "{}: unknown parameter `{}`{hint}; it accepts: {}",
                    info.name,
                    p.name,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            if given.iter().filter(|q| q.name == p.name).count() > 1 {
                return Err(PluginError::BadParams(format!(
                    "{}: parameter `{}` is given more than once",
                    info.name, p.name
                )));
            }
        }
        for d in &info.params {
            let value = match (given.iter().find(|p| p.name == d.name), &d.default) {
                (Some(p), _) => p.value.clone(),
                (None, Some(default)) => default.clone(),
                (None, None) => {
                    return Err(PluginError::BadParams(format!(
                        "{}: parameter `{}` is required ({})",
                        info.name, d.name, d.doc
                    )));
                }
            };
            values.push((d.name.clone(), value));
        }
        Ok(Params { plugin: info.name.clone(), values })
    }

    /// The raw text of a declared parameter.
    pub fn raw(&self, name: &str) -> &str {
        match self.values.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v,
            None => panic!("{}: parameter `{name}` is not declared in info()", self.plugin),
        }
    }

    /// Parses a parameter with [`FromStr`].
    pub fn get<T: FromStr>(&self, name: &str) -> Result<T, PluginError> {
        let raw = self.raw(name);
        raw.trim().parse().map_err(|_| self.bad(name, raw, kind_of::<T>()))
    }

    /// Parses a whole number and checks it lies in `range`.
    pub fn int_in(&self, name: &str, range: std::ops::RangeInclusive<i64>) -> Result<i64, PluginError> {
        let raw = self.raw(name);
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        match raw.trim().parse::<i64>() {
            Ok(v) if range.contains(&v) => Ok(v),
            _ => Err(self.bad(name, raw, &expected)),
        }
    }

    /// Parses a finite number greater than zero.
    pub fn positive(&self, name: &str) -> Result<f64, PluginError> {
        let raw = self.raw(name);
        match raw.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
            _ => Err(self.bad(name, raw, "a number greater than 0")),
        }
    }

    /// Parses a duration (as [`Params::duration_ms`]) greater than zero.
    pub fn positive_duration_ms(&self, name: &str) -> Result<i64, PluginError> {
        match self.duration_ms(name)? {
            0 => Err(self.bad(name, self.raw(name), "a duration greater than 0, such as 1m")),
            ms => Ok(ms),
        }
    }

    /// Parses a comma-separated list, such as `periods=5,15,30`.
    pub fn list<T: FromStr>(&self, name: &str) -> Result<Vec<T>, PluginError> {
        let raw = self.raw(name);
        let expected =
            format!("a comma-separated list of {}s, such as 5,15,30", kind_of::<T>().trim_start_matches("a "));
        if raw.trim().is_empty() {
            return Err(self.bad(name, raw, &expected));
        }
        // An empty entry (`5,,15`) is a typo, not a value to skip.
        raw.split(',').map(|s| s.trim().parse().map_err(|_| self.bad(name, raw, &expected))).collect()
    }

    /// Parses a whole number and checks it lies in `range`, with the same
    /// message as [`Params::int_in`].
    pub fn usize_in(&self, name: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, PluginError> {
        let raw = self.raw(name);
        match raw.trim().parse::<usize>() {
            Ok(v) if range.contains(&v) => Ok(v),
            _ => Err(self.bad(name, raw, &format!("a whole number from {} to {}", range.start(), range.end()))),
        }
    }

    /// Parses a non-empty comma-separated list of distinct whole numbers,
    /// each in `range`, such as `periods=5,15,30`; `example` is shown in the
    /// message for a bad one.
    pub fn distinct_list_in(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<usize>,
        example: &str,
    ) -> Result<Vec<usize>, PluginError> {
        let raw = self.raw(name);
        let expected = format!(
            "a comma-separated list of distinct whole numbers from {} to {}, such as {example}",
            range.start(),
            range.end()
        );
        let values: Vec<usize> = self.list(name).map_err(|_| self.bad(name, raw, &expected))?;
        if values.is_empty() || values.iter().any(|v| !range.contains(v)) {
            return Err(self.bad(name, raw, &expected));
        }
        if let Some((_, v)) = values.iter().enumerate().find(|&(i, v)| values[..i].contains(v)) {
            return Err(self.bad(name, raw, &format!("a list without repeats ({v} appears twice)")));
        }
        Ok(values)
    }

    /// Parses the name of an input field (surrounding spaces trimmed; empty
    /// is refused).
    pub fn field_name(&self, name: &str) -> Result<String, PluginError> {
        let raw = self.raw(name);
        match raw.trim() {
            "" => Err(self.bad(name, raw, "the name of an input field, such as close")),
            field => Ok(field.to_string()),
        }
    }

    /// Parses a duration in milliseconds: `250ms`, `30s`, `5m`, `1h`, `1d`,
    /// or a bare number of milliseconds.
    pub fn duration_ms(&self, name: &str) -> Result<i64, PluginError> {
        let raw = self.raw(name);
        parse_duration_ms(raw).ok_or_else(|| self.bad(name, raw, "a duration such as 500ms, 30s, 1m, 4h or 1d"))
    }

    /// Parses a UTC time of day `HH:MM` (or `HH:MM:SS`) into milliseconds
    /// after midnight.
    pub fn time_of_day_ms(&self, name: &str) -> Result<i64, PluginError> {
        let raw = self.raw(name);
        let parts: Vec<&str> = raw.trim().split(':').collect();
        let nums: Option<Vec<i64>> = parts.iter().map(|p| p.parse::<i64>().ok()).collect();
        match nums.as_deref() {
            Some([h, m]) if (0..24).contains(h) && (0..60).contains(m) => Ok((h * 60 + m) * 60_000),
            Some([h, m, s]) if (0..24).contains(h) && (0..60).contains(m) && (0..60).contains(s) => {
                Ok(((h * 60 + m) * 60 + s) * 1000)
            }
            _ => Err(self.bad(name, raw, "a UTC time of day such as 00:00 or 13:30")),
        }
    }

    /// A [`PluginError::BadParams`] for parameter `name`, saying what was
    /// expected.
    pub fn bad(&self, name: &str, got: &str, expected: &str) -> PluginError {
        PluginError::BadParams(format!("{}: parameter `{name}` must be {expected}, got `{got}`", self.plugin))
    }
}

/// What a value of `T` looks like, in words for whoever deploys a plugin.
fn kind_of<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        _ => "a valid value",
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `1d` or a bare number of ms.
pub fn parse_duration_ms(raw: &str) -> Option<i64> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The declared name nearest to `name` by edit distance, if near enough.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known.iter().map(|k| (edit_distance(name, k), *k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Info {
        Info::new("demo", "1.0").param("period", Some("14"), "bars").param("window", None, "length")
    }

    fn p(name: &str, value: &str) -> Param {
        Param { name: name.into(), value: value.into() }
    }

    #[test]
    fn defaults_fill_in_and_required_ones_are_required() {
        let err = Params::check(&info(), &[]).unwrap_err();
        assert!(err.message().contains("parameter `window` is required"), "{err}");
        let params = Params::check(&info(), &[p("window", "5m")]).unwrap();
        assert_eq!(params.get::<u32>("period").unwrap(), 14);
        assert_eq!(params.duration_ms("window").unwrap(), 300_000);
    }

    #[test]
    fn unknown_names_get_a_suggestion() {
        let err = Params::check(&info(), &[p("windw", "1m")]).unwrap_err();
        assert!(err.message().contains("did you mean `window`"), "{err}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let params = Params::check(&info(), &[p("window", "soon"), p("period", "x")]).unwrap();
        let err = params.duration_ms("window").unwrap_err().message().to_string();
        assert!(err.contains("must be a duration") && err.contains("`soon`"), "{err}");
        let err = params.get::<u32>("period").unwrap_err().message().to_string();
        assert!(err.contains("must be a whole number, 0 or more, got `x`"), "{err}");
    }

    #[test]
    fn distinct_lists_fields_and_bounded_numbers() {
        let info = Info::new("d", "1").param("periods", Some("5,15,30"), "").param("field", Some("close"), "").param(
            "period",
            Some("14"),
            "",
        );
        let params = Params::check(&info, &[p("field", " px ")]).unwrap();
        assert_eq!(params.distinct_list_in("periods", 1..=100, "5,15").unwrap(), [5, 15, 30]);
        assert_eq!(params.field_name("field").unwrap(), "px");
        assert_eq!(params.usize_in("period", 2..=20).unwrap(), 14);
        for bad in ["", "5,0", "5,x", "101", "-3", "5,,15"] {
            let params = Params::check(&info, &[p("periods", bad)]).unwrap();
            let err = params.distinct_list_in("periods", 1..=100, "5,15").unwrap_err().message().to_string();
            assert_eq!(
                err,
                format!(
                    "d: parameter `periods` must be a comma-separated list of distinct whole numbers from 1 to 100, \
                     such as 5,15, got `{bad}`"
                )
            );
        }
        let params = Params::check(&info, &[p("periods", "5,15,5"), p("field", " "), p("period", "1")]).unwrap();
        let err = params.distinct_list_in("periods", 1..=100, "5,15").unwrap_err().message().to_string();
        assert!(err.contains("must be a list without repeats (5 appears twice), got `5,15,5`"), "{err}");
        let err = params.field_name("field").unwrap_err().message().to_string();
        assert!(err.contains("`field` must be the name of an input field, such as close, got ` `"), "{err}");
        let err = params.usize_in("period", 2..=20).unwrap_err().message().to_string();
        assert!(err.contains("`period` must be a whole number from 2 to 20, got `1`"), "{err}");
    }

    #[test]
    fn durations_and_times_of_day_parse() {
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("1d"), Some(86_400_000));
        assert_eq!(parse_duration_ms("7"), Some(7));
        assert_eq!(parse_duration_ms("1w"), None);
        let info = Info::new("d", "1").param("at", Some("13:30"), "");
        let params = Params::check(&info, &[]).unwrap();
        assert_eq!(params.time_of_day_ms("at").unwrap(), (13 * 60 + 30) * 60_000);
    }
}
