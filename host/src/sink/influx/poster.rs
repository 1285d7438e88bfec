//! The writer thread: gathers handed-over lines into requests, posts them,
//! and retries until each is written.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use tracing::{error, info, warn};

use super::config::{Auth, Endpoint, Secret, Target};
use super::{Chunk, InfluxConfig, MAX_SPARE_BUFFERS, Shared, Stop, StopGuard};

/// The writer thread's side: gathers chunks into requests and posts them.
pub(super) struct Poster {
    shared: Arc<Shared>,
    /// Built on this thread (see `InfluxSink::start`).
    client: Client,
    endpoint: Endpoint,
    batch_points: u64,
    flush_interval: Duration,
    gzip: bool,
    initial_backoff: Duration,
    max_backoff: Duration,
    /// Taken from the shared queue, not yet in a request.
    pending: VecDeque<Chunk>,
    pending_points: u64,
    /// The current request's lines (reused).
    text: String,
    /// Emptied buffers to give back to writers.
    recycled: Vec<String>,
    /// The failure streak in progress, if any.
    outage: Option<Outage>,
    /// When a failure was last logged, and its kind: kept across streaks,
    /// so a server that fails every other request is not logged twice a
    /// request.
    last_failure_log: Option<(Instant, String)>,
    rejections: Throttle,
}

/// A run of failed attempts, for logging it without a line per retry.
struct Outage {
    since: Instant,
    failures: u64,
    /// Whether any of it was logged (then so is its end).
    logged: bool,
}

/// How often a continuing failure is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The outcome of one request.
enum Attempt {
    Written,
    /// 400 or 422: the server refused some or all lines. `dropped` is the
    /// count it reported (`… dropped=N`), if any.
    Rejected {
        dropped: Option<u64>,
        message: String,
    },
    /// 413.
    TooLarge,
    /// Worth trying again: connection failure, timeout, 5xx, 429, or a
    /// configuration problem someone can fix while we wait.
    Retry {
        kind: String,
        message: String,
        fix: String,
        config: bool,
        retry_after: Option<Duration>,
    },
}

/// What became of a batch once the server answered for good.
enum Answer {
    /// Written or rejected: nothing more to do with it.
    Settled,
    /// Too large (413): split it.
    TooLarge,
}

/// A request that did not go through before the close deadline.
struct GaveUp;

impl Poster {
    pub(super) fn new(shared: Arc<Shared>, client: Client, endpoint: Endpoint, config: &InfluxConfig) -> Self {
        Poster {
            shared,
            client,
            endpoint,
            batch_points: config.batch_points as u64,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            gzip: config.gzip,
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            pending: VecDeque::new(),
            pending_points: 0,
            text: String::new(),
            recycled: Vec::new(),
            outage: None,
            last_failure_log: None,
            rejections: Throttle::default(),
        }
    }

    pub(super) fn run(mut self) {
        let guard = StopGuard(self.shared.clone());
        let outcome = self.serve();
        let mut state = self.shared.lock();
        state.stopped = Some(match outcome {
            Ok(()) => Stop::Closed,
            Err(GaveUp) => Stop::GaveUp,
        });
        drop(state);
        drop(guard);
    }

    /// Posts batches as they become due, until closed with nothing left.
    fn serve(&mut self) -> Result<(), GaveUp> {
        loop {
            let mut state = self.shared.lock();
            for chunk in state.queue.drain(..) {
                self.pending_points += chunk.points;
                self.pending.push_back(chunk);
            }
            if self.pending.is_empty() && state.closed {
                // Under the lock: a writer handing over from now on sees
                // `stopped` rather than a queue nobody reads.
                state.stopped = Some(Stop::Closed);
                return Ok(());
            }
            let now = Instant::now();
            // Chunks from several writers interleave: the oldest line may
            // be in any of them.
            let oldest_due = self.pending.iter().map(|c| c.since).min().map(|since| since + self.flush_interval);
            let due = !self.pending.is_empty()
                && (self.pending_points >= self.batch_points
                    || state.closing.is_some()
                    || state.flush_through > state.settled
                    || oldest_due.is_some_and(|at| at <= now));
            if !due {
                // Sleep until the oldest line is due, or something arrives.
                match oldest_due {
                    Some(at) => drop(self.shared.to_thread.wait_timeout(state, at - now)),
                    None => drop(self.shared.to_thread.wait(state)),
                }
                continue;
            }
            if !self.recycled.is_empty() {
                let room = MAX_SPARE_BUFFERS.saturating_sub(state.spare.len());
                state.spare.extend(self.recycled.drain(..).take(room));
            }
            drop(state);
            let points = self.take_batch();
            let text = std::mem::take(&mut self.text);
            let delivered = self.deliver(&text, points);
            self.text = text;
            delivered?;
        }
    }

    /// Moves up to `batch_points` points from the front of `pending` into
    /// `self.text`.
    fn take_batch(&mut self) -> u64 {
        self.text.clear();
        let mut points = 0;
        while points < self.batch_points {
            let Some(chunk) = self.pending.front_mut() else { break };
            let want = self.batch_points - points;
            if chunk.points <= want {
                self.text.push_str(&chunk.lines[chunk.start..]);
                points += chunk.points;
                let mut done = self.pending.pop_front().expect("front exists").lines;
                done.clear();
                self.recycled.push(done);
            } else {
                let rest = &chunk.lines[chunk.start..];
                let end = after_lines(rest, want);
                self.text.push_str(&rest[..end]);
                chunk.start += end;
                chunk.points -= want;
                points += want;
            }
        }
        self.pending_points -= points;
        points
    }

    /// Posts one batch until it is settled: written, rejected, or split
    /// (413) into halves that are settled in order.
    fn deliver(&mut self, text: &str, points: u64) -> Result<(), GaveUp> {
        // A stack whose top is the next part to send, so parts go in order.
        let mut parts = vec![(text, points)];
        while let Some((part, points)) = parts.pop() {
            match self.post_until_answered(part, points)? {
                Answer::Settled => self.settle(points),
                Answer::TooLarge => {
                    let half = points / 2;
                    let end = after_lines(part, half);
                    parts.push((&part[end..], points - half));
                    parts.push((&part[..end], half));
                }
            }
        }
        Ok(())
    }

    /// Posts `text` until the server gives an answer retrying cannot
    /// change.
    fn post_until_answered(&mut self, text: &str, points: u64) -> Result<Answer, GaveUp> {
        let body = self.encode(text);
        let mut backoff = self.initial_backoff;
        loop {
            match self.post(&body) {
                Attempt::Written => {
                    self.recovered();
                    let c = &self.shared.counters;
                    c.points_written.fetch_add(points, Ordering::Relaxed);
                    c.batches_written.fetch_add(1, Ordering::Relaxed);
                    return Ok(Answer::Settled);
                }
                Attempt::Rejected { dropped, message } => {
                    self.recovered();
                    // A partial write reports how many points it dropped;
                    // the rest were written.
                    let rejected = dropped.map_or(points, |d| d.min(points));
                    let c = &self.shared.counters;
                    c.points_rejected.fetch_add(rejected, Ordering::Relaxed);
                    c.points_written.fetch_add(points - rejected, Ordering::Relaxed);
                    let message = format!("InfluxDB rejected {rejected} of {points} points: {message}");
                    self.shared.set_last_error(&message);
                    if let Some(suppressed) = self.rejections.ready(Instant::now()) {
                        error!(
                            url = %self.endpoint.base, suppressed,
                            "{message}. Retrying cannot help, so they are dropped (counted in points_rejected); a field type conflict means a series changed a field's type: rename the field or drop the measurement"
                        );
                    }
                    return Ok(Answer::Settled);
                }
                Attempt::TooLarge if points > 1 => {
                    self.recovered();
                    return Ok(Answer::TooLarge);
                }
                Attempt::TooLarge => {
                    self.recovered();
                    self.shared.counters.points_rejected.fetch_add(1, Ordering::Relaxed);
                    let message = format!(
                        "InfluxDB refused a single {}-byte point as too large (413); it is dropped (counted in points_rejected): raise the server's request size limit",
                        text.len()
                    );
                    self.shared.set_last_error(&message);
                    error!(url = %self.endpoint.base, "{message}");
                    return Ok(Answer::Settled);
                }
                Attempt::Retry { kind, message, fix, config, retry_after } => {
                    let wait = retry_after.unwrap_or(backoff);
                    self.failed(&kind, &message, &fix, config, points, wait);
                    let deadline = self.shared.lock().closing;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(GaveUp);
                    }
                    self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
                    self.pause(wait);
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// The request body: the lines, gzipped if configured.
    fn encode(&self, text: &str) -> Vec<u8> {
        if !self.gzip {
            return text.as_bytes().to_vec();
        }
        // The fastest level: line protocol compresses well at any level,
        // and this thread must keep up with every worker.
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 4), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).expect("gzip into memory cannot fail");
        gz.finish().expect("gzip into memory cannot fail")
    }

    /// One request, classified.
    fn post(&self, body: &[u8]) -> Attempt {
        let mut request = self
            .client
            .post(self.endpoint.write_url.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body.to_vec());
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        request = match &self.endpoint.auth {
            Auth::None => request,
            Auth::Basic(user, password) => request.basic_auth(user, password.as_ref().map(Secret::expose)),
            Auth::Header(value) => request.header(AUTHORIZATION, value.clone()),
        };
        let sent = Instant::now();
        let response = request.send();
        // Every answered request's time, for the write-latency histogram.
        if response.is_ok() {
            self.shared.counters.record_request(sent.elapsed());
        }
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry {
                    kind: "timeout".into(),
                    message: format!("InfluxDB did not answer in time: {}", error_chain(&e)),
                    fix: "the server is slow or overloaded: check it, or raise `timeout_ms`".into(),
                    config: false,
                    retry_after: None,
                };
            }
            Err(e) => {
                return Attempt::Retry {
                    kind: "unreachable".into(),
                    message: format!("cannot reach InfluxDB: {}", error_chain(&e)),
                    fix: "check that the server is running and that `url` points to it".into(),
                    config: false,
                    retry_after: None,
                };
            }
        };
        self.shared.counters.bytes_sent.fetch_add(body.len() as u64, Ordering::Relaxed);
        let status = response.status();
        if status.is_success() {
            // Read the (empty) body so the connection can be reused.
            let _ = response.bytes();
            return Attempt::Written;
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs.min(300)));
        let message = server_message(&response.text().unwrap_or_default());
        let retry = |kind: &str, fix: String, config: bool| Attempt::Retry {
            kind: format!("{kind} ({status})"),
            message: format!("InfluxDB answered {status}: {message}"),
            fix,
            config,
            retry_after,
        };
        match status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                Attempt::Rejected { dropped: dropped_count(&message), message }
            }
            StatusCode::PAYLOAD_TOO_LARGE => Attempt::TooLarge,
            StatusCode::TOO_MANY_REQUESTS => {
                retry("rate limited", "the server is limiting writes: check its limits or plan".into(), false)
            }
            StatusCode::REQUEST_TIMEOUT => retry("server timeout", "the server is overloaded: check it".into(), false),
            s if s.is_server_error() => {
                retry("server error", "the server failed to write: check its log and its disk".into(), false)
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => retry("not authorized", self.auth_fix(), true),
            StatusCode::NOT_FOUND => retry("not found", self.not_found_fix(), true),
            _ => retry(
                "unexpected answer",
                format!("check that `url` ({}) is the InfluxDB server and `api` is right", self.endpoint.base),
                true,
            ),
        }
    }

    fn auth_fix(&self) -> String {
        match &self.endpoint.target {
            Target::Database(db) => format!(
                "check `username` and `password` in [sinks.influx]: the user needs WRITE permission on database `{db}`"
            ),
            Target::Bucket { org, bucket } => format!(
                "check `token` in [sinks.influx]: it must be valid and allowed to write to bucket `{bucket}` of org `{org}`"
            ),
        }
    }

    fn not_found_fix(&self) -> String {
        match &self.endpoint.target {
            Target::Database(db) => format!(
                "create the database (`CREATE DATABASE \"{db}\"`, and the retention policy if one is set), or fix `database` in [sinks.influx]"
            ),
            Target::Bucket { org, bucket } => format!(
                "create bucket `{bucket}` in org `{org}`, or fix `org`/`bucket` in [sinks.influx]; an InfluxDB 1.x server has no v2 API: use `api = \"v1\"`"
            ),
        }
    }

    /// Records a failed attempt and logs it if its kind differs from the
    /// last one logged or `LOG_EVERY` has passed, not once per retry.
    fn failed(&mut self, kind: &str, message: &str, fix: &str, config: bool, points: u64, wait: Duration) {
        self.shared.set_last_error(message);
        let now = Instant::now();
        let outage = self.outage.get_or_insert(Outage { since: now, failures: 0, logged: false });
        outage.failures += 1;
        let due = match &self.last_failure_log {
            Some((at, last_kind)) => last_kind != kind || now.duration_since(*at) >= LOG_EVERY,
            None => true,
        };
        if due {
            self.last_failure_log = Some((now, kind.to_string()));
            outage.logged = true;
            let waiting = self.shared.stats().buffered_points;
            let (failures, secs) = (outage.failures, now.duration_since(outage.since).as_secs());
            if config {
                error!(
                    url = %self.endpoint.base, failures, failing_for_s = secs, waiting_points = waiting,
                    "{message}; {fix}. Retrying a batch of {points} points in {wait:?}, and on until it is fixed (nothing is dropped; writers wait once {} points are waiting)",
                    self.shared.buffer_points
                );
            } else {
                warn!(
                    url = %self.endpoint.base, failures, failing_for_s = secs, waiting_points = waiting,
                    "{message}; {fix}. Retrying a batch of {points} points in {wait:?}, and on until it goes through (nothing is dropped; writers wait once {} points are waiting)",
                    self.shared.buffer_points
                );
            }
        }
    }

    /// Ends a failure streak, saying so if it was logged.
    fn recovered(&mut self) {
        if let Some(outage) = self.outage.take()
            && outage.logged
        {
            info!(
                url = %self.endpoint.base, failures = outage.failures,
                "InfluxDB writes go through again, after failing for {:.1} s",
                outage.since.elapsed().as_secs_f64()
            );
        }
    }

    /// Waits `wait` before a retry, or until the close deadline.
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = self.shared.lock();
        loop {
            let end = state.closing.map_or(until, |deadline| deadline.min(until));
            let now = Instant::now();
            if now >= end {
                return;
            }
            state = self.shared.to_thread.wait_timeout(state, end - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Marks `points` done, in order, waking writers waiting for room and
    /// `sync`s waiting for them.
    fn settle(&mut self, points: u64) {
        let mut state = self.shared.lock();
        state.settled += points;
        drop(state);
        self.shared.to_writers.notify_all();
    }
}

/// Logs at most once per interval, counting what it held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    /// `Some(suppressed since last time)` if it is time to log again.
    fn ready(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now.duration_since(last) < Self::EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The byte offset just after the `n`th line of `text` (`n` ≥ 1, and
/// `text` holds at least `n` lines).
fn after_lines(text: &str, n: u64) -> usize {
    text.bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'\n')
        .nth(n as usize - 1)
        .map(|(i, _)| i + 1)
        .expect("a batch holds as many lines as it counts points")
}

/// The error message in an InfluxDB error body: `{"error": …}` (1.x),
/// `{"message": …}` (2.x), or the text itself, shortened.
fn server_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error").or_else(|| v.get("message")))
        .and_then(|m| m.as_str())
        .unwrap_or(body)
        .trim();
    if message.is_empty() {
        return "(no message)".into();
    }
    match message.char_indices().nth(500) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}

/// The `dropped=N` of an InfluxDB partial-write message.
fn dropped_count(message: &str) -> Option<u64> {
    let rest = &message[message.rfind("dropped=")? + "dropped=".len()..];
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// An error and its causes on one line (reqwest's own message says only
/// "error sending request"; the cause says "connection refused").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
