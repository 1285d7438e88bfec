//! `[sinks.influx]`: the config as written, and what it resolves to.

use std::collections::BTreeMap;

use reqwest::Url;
use reqwest::header::HeaderValue;

use super::InfluxError;
use super::line::{KEY_SPECIALS, escape_into};

/// Which InfluxDB write API the sink speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// `POST /write?db=…`: InfluxDB 1.x (and the 1.x compatibility API of
    /// InfluxDB 2.x and 3.x).
    V1,
    /// `POST /api/v2/write?org=…&bucket=…` with a token: InfluxDB 2.x and
    /// 3.x, and servers that accept InfluxDB's v2 writes (VictoriaMetrics).
    V2,
}

impl InfluxApi {
    /// As written in the config: `v1` or `v2`.
    pub fn name(self) -> &'static str {
        match self {
            InfluxApi::V1 => "v1",
            InfluxApi::V2 => "v2",
        }
    }
}

/// A password or token: read from the config, never printed.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, to put in a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where and how the InfluxDB sink writes: the `[sinks.influx]` table of
/// tickfold.toml.
///
/// ```toml
/// [sinks.influx]
/// url = "http://127.0.0.1:8086"
/// api = "v2"
/// org = "markets"
/// bucket = "tickfold"
/// token = "…"
/// tags = { host = "ny4-01" }
/// ```
///
/// or, for InfluxDB 1.x, `api = "v1"` with `database` (and optionally
/// `retention_policy`, `username`, `password`). [`InfluxConfig::validate`]
/// checks that the keys fit the API and names any that are missing.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8086`. A path (a
    /// server behind a proxy at `https://proxy/influx`) is kept; the write
    /// path is appended to it.
    pub url: String,
    /// `"v1"` (InfluxDB 1.x: `database`) or `"v2"` (InfluxDB 2.x/3.x:
    /// `org`, `bucket`, `token`).
    pub api: InfluxApi,
    /// v1: the database to write to. It must exist (`CREATE DATABASE …`).
    pub database: Option<String>,
    /// v1: the retention policy to write to; the database's default if unset.
    pub retention_policy: Option<String>,
    /// v1: the user to authenticate as (HTTP basic auth), if the server
    /// requires authentication.
    pub username: Option<String>,
    /// v1: that user's password.
    pub password: Option<Secret>,
    /// v2: the organization that owns `bucket`.
    pub org: Option<String>,
    /// v2: the bucket to write to.
    pub bucket: Option<String>,
    /// v2: an API token allowed to write to `bucket`.
    pub token: Option<Secret>,
    /// Tags added to every point, besides `symbol` (e.g. the host or the
    /// pipeline's name).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Points per request. Default 5000 (InfluxDB's own recommendation).
    #[serde(default = "defaults::batch_points")]
    pub batch_points: usize,
    /// The longest a point waits before it is posted, in milliseconds, when
    /// fewer than `batch_points` are waiting: the sink's added latency.
    /// Default 1000.
    #[serde(default = "defaults::flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// The most points handed over and not yet written. Writers that would
    /// go past it wait (back-pressure on the dataflow) rather than drop
    /// anything. Default 200 000 (about 20 MB of line protocol).
    #[serde(default = "defaults::buffer_points")]
    pub buffer_points: usize,
    /// Requests in flight at once, each on a connection of its own. The
    /// points of one series and symbol always go over the same one, so
    /// they arrive in the order they were made (InfluxDB keeps the last of
    /// equal timestamps).
    /// Default 4: InfluxDB parses and indexes requests in parallel; on two
    /// cores shared with the host, 1.x took in 135–145k points/s over one
    /// connection, 172–194k over two, 194–206k over four
    /// (docs/performance.md). `buffer_points` is shared out among them.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// Compress request bodies with gzip. Default true: market data line
    /// protocol shrinks about tenfold.
    #[serde(default = "defaults::gzip")]
    pub gzip: bool,
    /// Merge the points of one series and symbol at the same time before
    /// posting them, as InfluxDB would on write (the later point's fields
    /// win, its other fields stay). Default true: a per-trade series such
    /// as VWAP has several trades of a symbol in one millisecond, and the
    /// server stores one point for them anyway. Turn it off for a server
    /// that keeps every sample of a time (VictoriaMetrics without
    /// deduplication).
    #[serde(default = "defaults::coalesce")]
    pub coalesce: bool,
    /// How long one request may take, in milliseconds, before it is
    /// abandoned and retried. Default 10 000.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// The first wait before retrying a failed request, in milliseconds;
    /// it doubles with each failure. Default 100.
    #[serde(default = "defaults::initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest wait between retries, in milliseconds. Default 30 000.
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// How long closing the sink keeps trying to write what is left, in
    /// milliseconds, before it gives up and reports how many points were
    /// not written. Default 30 000.
    #[serde(default = "defaults::close_timeout_ms")]
    pub close_timeout_ms: u64,
}

/// The defaults, one function per field, for serde and the constructors.
mod defaults {
    pub fn batch_points() -> usize {
        5000
    }
    pub fn flush_interval_ms() -> u64 {
        1000
    }
    pub fn buffer_points() -> usize {
        200_000
    }
    pub fn connections() -> usize {
        4
    }
    pub fn gzip() -> bool {
        true
    }
    pub fn coalesce() -> bool {
        true
    }
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn initial_backoff_ms() -> u64 {
        100
    }
    pub fn max_backoff_ms() -> u64 {
        30_000
    }
    pub fn close_timeout_ms() -> u64 {
        30_000
    }
}

impl InfluxConfig {
    /// A v1 config (InfluxDB 1.x) with every other setting at its default.
    pub fn v1(url: impl Into<String>, database: impl Into<String>) -> Self {
        InfluxConfig { database: Some(database.into()), ..Self::with_defaults(url.into(), InfluxApi::V1) }
    }

    /// A v2 config (InfluxDB 2.x/3.x) with every other setting at its default.
    pub fn v2(url: impl Into<String>, org: impl Into<String>, bucket: impl Into<String>, token: Secret) -> Self {
        InfluxConfig {
            org: Some(org.into()),
            bucket: Some(bucket.into()),
            token: Some(token),
            ..Self::with_defaults(url.into(), InfluxApi::V2)
        }
    }

    fn with_defaults(url: String, api: InfluxApi) -> Self {
        InfluxConfig {
            url,
            api,
            database: None,
            retention_policy: None,
            username: None,
            password: None,
            org: None,
            bucket: None,
            token: None,
            tags: BTreeMap::new(),
            batch_points: defaults::batch_points(),
            flush_interval_ms: defaults::flush_interval_ms(),
            buffer_points: defaults::buffer_points(),
            connections: defaults::connections(),
            gzip: defaults::gzip(),
            coalesce: defaults::coalesce(),
            timeout_ms: defaults::timeout_ms(),
            initial_backoff_ms: defaults::initial_backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
            close_timeout_ms: defaults::close_timeout_ms(),
        }
    }

    /// Checks the rules that span keys: the API's keys are all there and
    /// the other API's are not, the URL and tags can be used, the sizes
    /// and times make sense. [`InfluxSink::start`](super::InfluxSink::start)
    /// checks the same.
    pub fn validate(&self) -> Result<(), InfluxError> {
        self.resolve().map(|_| ())
    }

    /// Validates, and works out the request URL and credentials.
    pub(super) fn resolve(&self) -> Result<Endpoint, InfluxError> {
        // Destructured so that a new key cannot be left unchecked.
        let InfluxConfig {
            url,
            api,
            database,
            retention_policy,
            username,
            password,
            org,
            bucket,
            token,
            tags,
            batch_points,
            flush_interval_ms: _, // any value works: 0 posts every hand-over at once
            buffer_points,
            connections,
            gzip: _,
            coalesce: _,
            timeout_ms,
            initial_backoff_ms,
            max_backoff_ms,
            close_timeout_ms: _, // 0 tries each batch once when closing
        } = self;
        let bad = |key: &'static str, problem: String| Err(InfluxError::Config { key, problem });

        let base = match Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => u,
            Ok(_) => return bad("url", format!("`{url}` is not an http:// or https:// URL with a host")),
            Err(e) => return bad("url", format!("`{url}` is not a URL ({e}); write it like `http://127.0.0.1:8086`")),
        };
        if !base.username().is_empty() || base.password().is_some() {
            return bad(
                "url",
                "holds credentials, which would end up in logs; use `username`/`password` (v1) or `token` (v2)".into(),
            );
        }
        if base.query().is_some() || base.fragment().is_some() {
            return bad("url", format!("`{url}` has a query or fragment; give only the server's base URL"));
        }

        let v1_keys = [
            ("database", database.is_some()),
            ("retention_policy", retention_policy.is_some()),
            ("username", username.is_some()),
            ("password", password.is_some()),
        ];
        let v2_keys = [("org", org.is_some()), ("bucket", bucket.is_some()), ("token", token.is_some())];
        let (other, required, own, foreign) = match api {
            InfluxApi::V1 => (InfluxApi::V2, &["database"][..], &v1_keys[..], &v2_keys[..]),
            InfluxApi::V2 => (InfluxApi::V1, &["org", "bucket", "token"][..], &v2_keys[..], &v1_keys[..]),
        };
        let (this, other) = (api.name(), other.name());
        if let Some(key) = required.iter().find(|key| !own.iter().any(|(k, set)| k == *key && *set)) {
            return bad(key, format!("is missing: `api = \"{this}\"` needs it"));
        }
        if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
            return bad(key, format!("belongs to `api = \"{other}\"`, but `api = \"{this}\"` is set"));
        }
        for (key, value) in
            [("database", database), ("retention_policy", retention_policy), ("org", org), ("bucket", bucket)]
        {
            if value.as_deref() == Some("") {
                return bad(key, "is empty".into());
            }
        }
        if password.is_some() && username.is_none() {
            return bad("password", "is set without `username`".into());
        }

        for (key, value) in tags {
            let problem = if key == "symbol" {
                Some("the sink sets `symbol` itself, from each sample")
            } else if key == "time" {
                Some("InfluxDB reserves `time`")
            } else if key.is_empty() || value.is_empty() {
                Some("tag keys and values cannot be empty")
            } else if !escape_into(&mut String::new(), key, KEY_SPECIALS)
                || !escape_into(&mut String::new(), value, KEY_SPECIALS)
            {
                Some("cannot hold a line break, or a backslash at the end or before `,`, `=` or a space")
            } else {
                None
            };
            if let Some(problem) = problem {
                return bad("tags", format!("tag `{key}` = `{value}`: {problem}"));
            }
        }

        if *batch_points == 0 {
            return bad("batch_points", "must be at least 1".into());
        }
        if *connections == 0 || *connections > 64 {
            return bad("connections", format!("({connections}) must be from 1 to 64"));
        }
        if *buffer_points < batch_points.saturating_mul(*connections) {
            return bad(
                "buffer_points",
                format!(
                    "({buffer_points}) must be at least `batch_points` × `connections` ({batch_points} × {connections}), or no batch would fit in a connection's share"
                ),
            );
        }
        if *timeout_ms == 0 {
            return bad("timeout_ms", "must be at least 1".into());
        }
        if *initial_backoff_ms == 0 {
            return bad("initial_backoff_ms", "must be at least 1".into());
        }
        if max_backoff_ms < initial_backoff_ms {
            return bad(
                "max_backoff_ms",
                format!("({max_backoff_ms}) must be at least `initial_backoff_ms` ({initial_backoff_ms})"),
            );
        }

        let mut write_url = base.clone();
        write_url.path_segments_mut().expect("an http URL with a host has a path").pop_if_empty().extend(match api {
            InfluxApi::V1 => &["write"][..],
            InfluxApi::V2 => &["api", "v2", "write"][..],
        });
        {
            let mut query = write_url.query_pairs_mut();
            match api {
                InfluxApi::V1 => {
                    query.append_pair("db", database.as_deref().unwrap_or_default());
                    if let Some(rp) = retention_policy {
                        query.append_pair("rp", rp);
                    }
                }
                InfluxApi::V2 => {
                    query.append_pair("org", org.as_deref().unwrap_or_default());
                    query.append_pair("bucket", bucket.as_deref().unwrap_or_default());
                }
            }
            // Event times are in milliseconds; the server's default is ns.
            query.append_pair("precision", "ms");
        }
        let auth = match (username, token) {
            (Some(user), _) => Auth::Basic(user.clone(), password.clone()),
            (None, Some(token)) => {
                let mut value =
                    HeaderValue::from_str(&format!("Token {}", token.expose())).map_err(|_| InfluxError::Config {
                        key: "token",
                        problem: "holds characters that cannot go in an HTTP header".into(),
                    })?;
                value.set_sensitive(true);
                Auth::Header(value)
            }
            (None, None) => Auth::None,
        };
        let target = match api {
            InfluxApi::V1 => Target::Database(database.clone().unwrap_or_default()),
            InfluxApi::V2 => {
                Target::Bucket { org: org.clone().unwrap_or_default(), bucket: bucket.clone().unwrap_or_default() }
            }
        };
        Ok(Endpoint { base, write_url, auth, target })
    }
}

/// Where requests go, resolved from the config.
#[derive(Clone)]
pub(super) struct Endpoint {
    /// For logs (it holds no credentials: validation refuses them).
    pub(super) base: Url,
    pub(super) write_url: Url,
    pub(super) auth: Auth,
    pub(super) target: Target,
}

#[derive(Clone)]
pub(super) enum Auth {
    None,
    Basic(String, Option<Secret>),
    /// `Token …`, marked sensitive.
    Header(HeaderValue),
}

/// What is written to, to name in messages.
#[derive(Clone)]
pub(super) enum Target {
    Database(String),
    Bucket { org: String, bucket: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Database(db) => write!(f, "database `{db}`"),
            Target::Bucket { org, bucket } => write!(f, "bucket `{bucket}` of org `{org}`"),
        }
    }
}
