//! The admin HTTP API of `tickfold run`: deploy, upgrade, list and remove
//! plugins while the host runs (`tickfold deploy`, `tickfold plugins`,
//! `tickfold remove` are its clients).
//!
//! | method and path | what it does |
//! | --- | --- |
//! | `GET /v1/plugins` | the DAG's plugins with their counts |
//! | `PUT /v1/plugins/{name}?input=…&param=k=v&rename=a=b&wait_ms=…` | deploys the component in the body under `name`, or upgrades the plugin of that name |
//! | `DELETE /v1/plugins/{name}?wait_ms=…` | removes a deployed plugin |
//! | `GET /v1/changes/{id}` | where a deploy, upgrade or removal stands |
//!
//! A change answers 200 once every worker has applied it, 202 if it was
//! accepted but has not taken effect within `wait_ms` (the stream has not
//! reached its event time yet), and 4xx with `{"error": "…"}` saying why it
//! was refused.
//!
//! With a token configured, every request needs `Authorization: Bearer
//! TOKEN`. Without one the API listens on loopback only, whatever `listen`
//! says. Like `/metrics`, it runs on its own thread and tokio runtime;
//! deploys (compiling a component, waiting for the dataflow) run on
//! tokio's blocking pool.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::deploy::{ChangeStatus, ControlPlane, DeployError, DeployRequest};
use crate::sink::influx::Secret;

/// The default address of the admin API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9465";

/// The `[admin]` table: the API is served only when it is present.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the API listens, `ip:port`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The bearer token every request must carry (set it with
    /// `TICKFOLD__ADMIN__TOKEN` or `TICKFOLD__ADMIN__TOKEN_FILE`). Without
    /// one, the API listens on loopback only.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Where deployed plugins are kept, so a restarted host runs them
    /// again (relative to the config file).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The largest component a deploy may upload (default: the sandbox's
    /// limit on component files).
    #[serde(default)]
    pub max_plugin_bytes: Option<usize>,
    /// How far ahead of the newest event time a change takes effect at
    /// the earliest (ms): rows beyond that promise wait for it.
    #[serde(default = "default_lead")]
    pub deploy_lead_ms: i64,
    /// How long a deploy waits for the change to take effect before it
    /// answers 202 (ms).
    #[serde(default = "default_wait")]
    pub wait_ms: u64,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid address")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("tickfold-state")
}

fn default_lead() -> i64 {
    1_000
}

fn default_wait() -> u64 {
    30_000
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the admin API cannot listen on {addr}: {source} (is another process using the port? set `[admin] listen`)"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the admin API could not start: {0}")]
    Start(std::io::Error),
}

#[derive(Clone)]
struct Ctx {
    control: Arc<ControlPlane>,
    token: Option<Arc<Secret>>,
    wait: Duration,
    max_bytes: usize,
}

/// The running API; stopped when dropped.
pub struct AdminServer {
    server: crate::http::Server,
}

impl AdminServer {
    /// Binds and starts serving `control`. `max_bytes` is the largest body
    /// a deploy may send.
    pub fn start(config: &AdminConfig, control: Arc<ControlPlane>, max_bytes: usize) -> Result<Self, ApiError> {
        let mut addr = config.listen;
        if config.token.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                "[admin] has no token: the admin API listens on loopback only (127.0.0.1:{}), not {addr}; set TICKFOLD__ADMIN__TOKEN to serve other hosts",
                addr.port()
            );
            addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port());
        } else if config.token.is_none() {
            tracing::info!("[admin] has no token: the admin API takes requests from this host only");
        }
        let ctx = Ctx {
            control,
            token: config.token.clone().map(Arc::new),
            wait: Duration::from_millis(config.wait_ms),
            max_bytes,
        };
        let server = crate::http::Server::start(addr, "admin-api", router(ctx)).map_err(|e| match e {
            crate::http::StartError::Bind(source) => ApiError::Bind { addr, source },
            crate::http::StartError::Start(e) => ApiError::Start(e),
        })?;
        tracing::info!(addr = %server.addr(), "admin API on http://{}/v1/plugins", server.addr());
        Ok(AdminServer { server })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops serving and waits for the thread.
    pub fn stop(self) {
        self.server.stop();
    }
}

fn router(ctx: Ctx) -> Router {
    let limit = ctx.max_bytes.saturating_add(1);
    Router::new()
        .route("/v1/plugins", get(list))
        .route("/v1/plugins/{name}", axum::routing::put(deploy).delete(remove))
        .route("/v1/changes/{id}", get(change))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), authorize))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ctx)
}

/// `{"error": message}` with a status.
fn error(status: u16, message: impl std::fmt::Display) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": message.to_string() });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(500, e),
    }
}

async fn authorize(State(ctx): State<Ctx>, request: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes()));
        if !ok {
            return error(
                401,
                "missing or wrong bearer token: send `Authorization: Bearer TOKEN` (tickfold deploy reads it from --token or TICKFOLD_ADMIN_TOKEN)",
            );
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn list(State(ctx): State<Ctx>) -> Response {
    json(StatusCode::OK, &ctx.control.list())
}

async fn change(State(ctx): State<Ctx>, Path(id): Path<u64>) -> Response {
    match ctx.control.status(id) {
        Some(status) => json(StatusCode::OK, &status),
        None => error(404, format!("no change has id {id}")),
    }
}

/// Query pairs in order (`input`, `param` and `rename` repeat).
type Pairs = Vec<(String, String)>;

/// `wait_ms` of the query, or the configured wait; a bad value is a 400.
fn wait_of(ctx: &Ctx, query: &Pairs) -> Result<Duration, String> {
    match query.iter().rev().find(|(k, _)| k == "wait_ms") {
        Some((_, v)) => v
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("wait_ms={v}: not a number of milliseconds")),
        None => Ok(ctx.wait),
    }
}

fn key_value(what: &str, pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{what}={pair}: write it as NAME=VALUE")),
    }
}

async fn deploy(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Query(query): Query<Pairs>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let e = DeployError::TooLarge { size: declared.unwrap_or(ctx.max_bytes + 1), limit: ctx.max_bytes };
            return error(e.status(), e);
        }
        Err(rejection) => return error(400, rejection.body_text()),
    };
    let mut request = DeployRequest { name, wasm: body.to_vec(), ..DeployRequest::default() };
    for (k, v) in &query {
        let parsed = match k.as_str() {
            "input" => {
                request.inputs.push(v.clone());
                Ok(())
            }
            "param" => key_value("param", v).map(|kv| request.params.push(kv)),
            "rename" => key_value("rename", v).map(|(a, b)| {
                request.rename.insert(a, b);
            }),
            "wait_ms" => Ok(()),
            other => Err(format!("unknown query parameter `{other}` (use input, param, rename, wait_ms)")),
        };
        if let Err(message) = parsed {
            return error(400, message);
        }
    }
    let wait = match wait_of(&ctx, &query) {
        Ok(w) => w,
        Err(message) => return error(400, message),
    };
    let control = ctx.control.clone();
    let result = tokio::task::spawn_blocking(move || {
        let status = control.deploy(request)?;
        Ok::<_, DeployError>(control.wait(status.id, wait).unwrap_or(status))
    })
    .await;
    answer(result)
}

async fn remove(State(ctx): State<Ctx>, Path(name): Path<String>, Query(query): Query<Pairs>) -> Response {
    let wait = match wait_of(&ctx, &query) {
        Ok(w) => w,
        Err(message) => return error(400, message),
    };
    let control = ctx.control.clone();
    let result = tokio::task::spawn_blocking(move || {
        let status = control.remove(&name)?;
        Ok::<_, DeployError>(control.wait(status.id, wait).unwrap_or(status))
    })
    .await;
    answer(result)
}

fn answer(result: Result<Result<ChangeStatus, DeployError>, tokio::task::JoinError>) -> Response {
    match result {
        Ok(Ok(status)) => {
            let code = if status.complete() { StatusCode::OK } else { StatusCode::ACCEPTED };
            json(code, &status)
        }
        Ok(Err(e)) => {
            tracing::warn!("{e}");
            error(e.status(), e)
        }
        Err(e) => error(500, format!("the deploy failed inside the host: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
