//! The admin API's client: `tickfold deploy`, `tickfold plugins` and
//! `tickfold remove` talk to a running host through it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::deploy::{ChangeStatus, PluginInfo};

/// Where the host's admin API is, and the token it wants.
#[derive(Clone, Debug)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
}

/// A deploy as the command line gives it.
#[derive(Clone, Debug, Default)]
pub struct Deploy {
    pub name: String,
    pub inputs: Vec<String>,
    pub params: Vec<String>,
    pub rename: Vec<String>,
    /// How long the host waits for the change to take effect (ms).
    pub wait_ms: Option<u64>,
}

impl AdminClient {
    /// A client of the API at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            // A deploy waits for the stream to reach the change's time.
            .timeout(Duration::from_secs(300))
            .build()
            .context("making the HTTP client")?;
        Ok(AdminClient { base: url.trim_end_matches('/').to_string(), token: token.filter(|t| !t.is_empty()), http })
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder) -> Result<(u16, String)> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().with_context(|| {
            format!("cannot reach the admin API at {} (is `tickfold run` running with an [admin] table?)", self.base)
        })?;
        let status = response.status().as_u16();
        let body = response.text().context("reading the admin API's answer")?;
        if status >= 400 {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(body);
            bail!("{message} (HTTP {status})");
        }
        Ok((status, body))
    }

    /// Deploys (or upgrades) the component at `wasm`.
    pub fn deploy(&self, wasm: &Path, deploy: &Deploy) -> Result<ChangeStatus> {
        let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        query.extend(deploy.inputs.iter().map(|i| ("input", i.as_str())));
        query.extend(deploy.params.iter().map(|p| ("param", p.as_str())));
        query.extend(deploy.rename.iter().map(|r| ("rename", r.as_str())));
        let wait = deploy.wait_ms.map(|w| w.to_string());
        if let Some(w) = &wait {
            query.push(("wait_ms", w));
        }
        let url = format!("{}/v1/plugins/{}", self.base, deploy.name);
        let (_, body) = self.send(
            self.http.put(url).query(&query).header(reqwest::header::CONTENT_TYPE, "application/wasm").body(bytes),
        )?;
        serde_json::from_str(&body).with_context(|| format!("the admin API answered something unexpected: {body}"))
    }

    /// Removes the deployed plugin `name`.
    pub fn remove(&self, name: &str, wait_ms: Option<u64>) -> Result<ChangeStatus> {
        let url = format!("{}/v1/plugins/{name}", self.base);
        let query: Vec<(&str, String)> = wait_ms.map(|w| ("wait_ms", w.to_string())).into_iter().collect();
        let (_, body) = self.send(self.http.delete(url).query(&query))?;
        serde_json::from_str(&body).with_context(|| format!("the admin API answered something unexpected: {body}"))
    }

    /// The running plugins.
    pub fn plugins(&self) -> Result<Vec<PluginInfo>> {
        let (_, body) = self.send(self.http.get(format!("{}/v1/plugins", self.base)))?;
        serde_json::from_str(&body).with_context(|| format!("the admin API answered something unexpected: {body}"))
    }
}

/// One line (or two) for a person about a change.
pub fn describe_change(s: &ChangeStatus) -> String {
    let at = s.at.map_or_else(|| "an event time not yet picked".to_string(), crate::host::format_ms);
    let what = match (s.change.as_str(), &s.plugin, &s.previous) {
        ("upgrade", Some(new), Some(old)) => format!("upgrade of `{}` from {old} to {new}", s.name),
        ("remove", _, Some(old)) => format!("removal of `{}` ({old})", s.name),
        (_, Some(new), _) => format!("deploy of `{}` ({new})", s.name),
        _ => format!("{} of `{}`", s.change, s.name),
    };
    let mut line = if s.complete() {
        format!("{what}: in effect on all {} workers from event time {at}", s.workers)
    } else {
        format!(
            "{what}: accepted, takes effect at event time {at} once the stream gets there ({} of {} workers so far; `tickfold plugins` shows it)",
            s.applied, s.workers
        )
    };
    if !s.outputs.is_empty() {
        line.push_str(&format!("\n  writes: {}", s.outputs.join(", ")));
    }
    if let Some(state) = &s.state {
        line.push_str(&format!("\n  state: {state}"));
    }
    for (worker, outcome) in s.outcomes.iter().enumerate() {
        if let Some(crate::deploy::Applied::Failed(why)) = outcome {
            line.push_str(&format!("\n  worker {worker} could not apply it: {why}"));
        }
    }
    line
}

/// The running plugins as a table.
pub fn plugins_table(plugins: &[PluginInfo]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "PLUGIN".into(),
        "ORIGIN".into(),
        "INPUTS".into(),
        "OUTPUTS".into(),
        "INST".into(),
        "IN".into(),
        "OUT".into(),
        "ERRORS".into(),
        "STATUS".into(),
    ]];
    for p in plugins {
        rows.push([
            p.name.clone(),
            format!("{}@{}", p.plugin, p.version),
            p.origin.clone(),
            p.inputs.join(","),
            p.outputs.join(","),
            p.instances.to_string(),
            p.samples_in.to_string(),
            p.samples_out.to_string(),
            p.errors.to_string(),
            p.status.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..10).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
