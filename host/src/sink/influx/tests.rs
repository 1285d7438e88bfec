//! The sink against a scripted HTTP server on loopback: line protocol,
//! config, batching, gzip, retries, rejections, splitting, back-pressure.
//! The real servers are in tests/all/influx.rs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::line::{MAX_TS_MS, Skip, TagSet, push_line};
use super::*;
use crate::exec::OutputWriter;
use crate::synthetic::Rng;

// ---------------------------------------------------------------------------
// A scripted InfluxDB

/// One request the mock received.
#[derive(Clone, Debug)]
struct Request {
    /// Path and query, as sent.
    target: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    /// The body as sent.
    raw: Vec<u8>,
    /// The body, gunzipped if it came gzipped.
    text: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn lines(&self) -> Vec<&str> {
        self.text.lines().collect()
    }
}

/// What the mock answers; status 0 hangs up without answering.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn status(status: u16) -> Self {
        Reply { status, headers: Vec::new(), body: String::new() }
    }

    fn error(status: u16, message: &str) -> Self {
        Reply { body: serde_json::json!({ "error": message }).to_string(), ..Reply::status(status) }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

type Respond = dyn Fn(usize, &Request) -> Reply + Send + Sync;

/// An HTTP/1.1 server on a free loopback port that answers each request
/// as `respond` says (given the request's index) and records it.
struct Mock {
    port: u16,
    log: Arc<Mutex<Vec<(Request, u16)>>>,
}

impl Mock {
    fn start(respond: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Respond> = Arc::new(respond);
        let count = Arc::new(AtomicUsize::new(0));
        let thread_log = log.clone();
        // Lives until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (respond, log, count) = (respond.clone(), thread_log.clone(), count.clone());
                std::thread::spawn(move || serve_connection(stream.unwrap(), &*respond, &log, &count));
            }
        });
        Mock { port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().iter().map(|(r, _)| r.clone()).collect()
    }

    /// Points per request, in order.
    fn sizes(&self) -> Vec<usize> {
        self.requests().iter().map(|r| r.lines().len()).collect()
    }

    /// The lines of every request answered 2xx, in order.
    fn accepted(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, status)| (200..300).contains(status))
            .flat_map(|(r, _)| r.lines().into_iter().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }
}

fn serve_connection(stream: TcpStream, respond: &Respond, log: &Mutex<Vec<(Request, u16)>>, count: &AtomicUsize) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let target = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let length = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let mut raw = vec![0; length];
        reader.read_exact(&mut raw).unwrap();
        let gzipped = headers.iter().any(|(n, v)| n == "content-encoding" && v == "gzip");
        let text = if gzipped {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&raw[..]).read_to_string(&mut text).unwrap();
            text
        } else {
            String::from_utf8(raw.clone()).unwrap()
        };
        let request = Request { target, headers, raw, text };
        let reply = respond(count.fetch_add(1, Ordering::SeqCst), &request);
        // Logged before answering, so a client that has its answer finds
        // the request in the log.
        log.lock().unwrap().push((request, reply.status));
        if reply.status == 0 {
            return;
        }
        let mut head = format!("HTTP/1.1 {} Scripted\r\nContent-Length: {}\r\n", reply.status, reply.body.len());
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).and_then(|()| out.write_all(reply.body.as_bytes())).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// A v1 config for the mock: no flushing by time (tests flush by size,
/// `sync` or `close`), quick retries.
fn config(mock: &Mock) -> InfluxConfig {
    // The sink's log, shown with a failing test's output.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    InfluxConfig {
        batch_points: 1000,
        flush_interval_ms: 3_600_000,
        initial_backoff_ms: 1,
        max_backoff_ms: 20,
        close_timeout_ms: 10_000,
        // One lane, so requests and their order are the test's to predict;
        // `series_spread_over_connections_…` tests several.
        connections: 1,
        ..InfluxConfig::v1(mock.url(), "ticks")
    }
}

const T0: i64 = 1_700_000_000_000;

/// Point `i` of series `s`, symbol `S`.
fn write_point(w: &mut InfluxWriter, i: usize) {
    w.write("s", &["v".to_string()], "S", T0 + i as i64, &[i as f64]).unwrap();
}

/// How point `i` reads as line protocol.
fn line(i: usize) -> String {
    format!("s,symbol=S v={:?} {}", i as f64, T0 + i as i64)
}

fn lines(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(line).collect()
}

/// Checks that the server accepted, of series `s`, symbols `{prefix}0` to
/// `{prefix}{symbols - 1}` each with the times `T0 .. T0 + points`, every
/// point once and each symbol's in order.
fn each_symbol_once_in_order(mock: &Mock, prefix: &str, symbols: usize, points: i64) {
    let accepted = mock.accepted();
    assert_eq!(accepted.len(), symbols * points as usize, "no point lost or written twice");
    for k in 0..symbols {
        let start = format!("s,symbol={prefix}{k} ");
        let times: Vec<i64> = accepted
            .iter()
            .filter(|l| l.starts_with(&start))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(times, (0..points).map(|i| T0 + i).collect::<Vec<_>>(), "{prefix}{k}'s points, in order");
    }
}

/// Waits (up to a generous limit) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn one_line(
    tags: &TagSet,
    series: &str,
    fields: &[&str],
    symbol: &str,
    ts: i64,
    values: &[f64],
) -> Result<String, Skip> {
    let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    let mut out = String::from("kept\n");
    let result = push_line(&mut out, tags, series, &fields, symbol, ts, values);
    match result {
        Ok(()) => Ok(out["kept\n".len()..].to_string()),
        Err(skip) => {
            assert_eq!(out, "kept\n", "a skipped point leaves the buffer as it was");
            Err(skip)
        }
    }
}

// ---------------------------------------------------------------------------
// Line protocol

#[test]
fn lines_escape_awkward_names_and_sort_tags() {
    let tags = TagSet::new(&BTreeMap::from([
        ("zone".to_string(), "eu west".to_string()),
        ("a".to_string(), "x=1,y".to_string()),
    ]));
    let got =
        one_line(&tags, "bars 1m,x=y", &["o,p", "h=i", "l m", r"c\d"], "BRK B,A=1", T0, &[1.5, 2.0, -0.25, 1e300]);
    // The measurement escapes only commas and spaces; keys and tag values
    // also equals signs; a backslash before an ordinary character is literal.
    assert_eq!(
        got.unwrap(),
        r"bars\ 1m\,x=y,a=x\=1\,y,symbol=BRK\ B\,A\=1,zone=eu\ west o\,p=1.5,h\=i=2.0,l\ m=-0.25,c\d=1e300 1700000000000"
            .to_string()
            + "\n"
    );
    // No extra tags, an empty symbol (left out: a missing tag reads as
    // empty), a negative time.
    assert_eq!(one_line(&TagSet::default(), "m", &["v"], "", -5, &[1.0]).unwrap(), "m v=1.0 -5\n");
    assert_eq!(one_line(&TagSet::default(), "m", &["v"], r"a\b", 0, &[1.0]).unwrap(), "m,symbol=a\\b v=1.0 0\n");
}

#[test]
fn numbers_are_written_shortest_and_read_back_exactly() {
    let mut rng = Rng::new(7);
    let mut values = vec![
        0.1,
        0.1 + 0.2,
        1.0,
        -0.0,
        1e300,
        1e-300,
        5e-324,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        f64::EPSILON,
        123_456_789.125,
        1e15,
        1e16,
        9_007_199_254_740_993.0,
    ];
    values.extend((0..20_000).map(|_| f64::from_bits(rng.next_u64())).filter(|v| v.is_finite()));
    let tags = TagSet::default();
    for v in values {
        let got = one_line(&tags, "m", &["v"], "S", 0, &[v]).unwrap();
        let text = got.strip_prefix("m,symbol=S v=").unwrap().strip_suffix(" 0\n").unwrap();
        assert_eq!(text.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{v:e} was written as `{text}`");
        // Shortest form, with an exponent for extremes, not 300 digits.
        assert!(text.len() <= 24, "{v:e} was written as `{text}`");
    }
    assert_eq!(one_line(&tags, "m", &["v"], "S", 0, &[1e300]).unwrap(), "m,symbol=S v=1e300 0\n");
}

#[test]
fn non_finite_fields_are_left_out_and_points_without_any_are_skipped() {
    let tags = TagSet::default();
    let got = one_line(&tags, "m", &["a", "b", "c"], "S", 0, &[f64::NAN, 1.0, f64::INFINITY]);
    assert_eq!(got.unwrap(), "m,symbol=S b=1.0 0\n");
    let got = one_line(&tags, "m", &["a", "b"], "S", 0, &[f64::NAN, f64::NEG_INFINITY]);
    assert_eq!(got, Err(Skip::NonFinite));
}

#[test]
fn unwritable_names_and_times_are_skipped() {
    let tags = TagSet::default();
    let cases: [(&str, &str, &str, i64); 10] = [
        ("", "v", "S", 0),
        ("#comment", "v", "S", 0),
        ("m\nx", "v", "S", 0),
        ("m", "v", "S\r", 0),
        ("m", "v", r"S\", 0),
        ("m", "v", r"S\,T", 0),
        ("m", r"v\", "S", 0),
        ("m", "", "S", 0),
        ("m", "v", "S", MAX_TS_MS + 1),
        ("m", "v", "S", -MAX_TS_MS - 1),
    ];
    for (series, field, symbol, ts) in cases {
        let got = one_line(&tags, series, &[field], symbol, ts, &[1.0]);
        assert_eq!(got, Err(Skip::Unwritable), "series {series:?} field {field:?} symbol {symbol:?} ts {ts}");
    }
    assert!(one_line(&tags, "m", &["v"], "S", MAX_TS_MS, &[1.0]).is_ok());
}

// ---------------------------------------------------------------------------
// Config

#[test]
fn config_reads_from_toml_with_defaults_and_hides_secrets() {
    let v2: InfluxConfig = toml::from_str(
        r#"
        url = "http://127.0.0.1:8086"
        api = "v2"
        org = "markets"
        bucket = "tickfold"
        token = "s3cret-token"
        tags = { host = "ny4-01" }
        batch_points = 100
        "#,
    )
    .unwrap();
    v2.validate().unwrap();
    assert_eq!(v2.api, InfluxApi::V2);
    assert_eq!((v2.batch_points, v2.buffer_points, v2.flush_interval_ms), (100, 200_000, 1000));
    assert!(v2.gzip);
    assert_eq!(
        (v2.timeout_ms, v2.initial_backoff_ms, v2.max_backoff_ms, v2.close_timeout_ms),
        (10_000, 100, 30_000, 30_000)
    );
    assert_eq!(v2.tags["host"], "ny4-01");
    assert!(!format!("{v2:?}").contains("s3cret"), "Debug shows the token: {v2:?}");

    let v1: InfluxConfig = toml::from_str(
        r#"
        url = "https://influx.example/proxy"
        api = "v1"
        database = "ticks"
        retention_policy = "one_year"
        username = "writer"
        password = "pa55word"
        "#,
    )
    .unwrap();
    v1.validate().unwrap();
    assert!(!format!("{v1:?}").contains("pa55word"), "Debug shows the password: {v1:?}");

    let unknown = toml::from_str::<InfluxConfig>("url = \"http://h\"\napi = \"v1\"\ndatabse = \"x\"\n");
    assert!(unknown.unwrap_err().to_string().contains("unknown field `databse`"));
}

#[test]
fn config_errors_name_the_key_and_the_fix() {
    let v1 = || InfluxConfig::v1("http://127.0.0.1:8086", "ticks");
    let v2 = || InfluxConfig::v2("http://127.0.0.1:8086", "o", "b", Secret::new("t"));
    let cases: Vec<(InfluxConfig, &str)> = vec![
        (InfluxConfig { database: None, ..v1() }, "`database` is missing: `api = \"v1\"` needs it"),
        (InfluxConfig { token: None, ..v2() }, "`token` is missing: `api = \"v2\"` needs it"),
        (InfluxConfig { token: Some(Secret::new("t")), ..v1() }, "`token` belongs to `api = \"v2\"`"),
        (InfluxConfig { database: Some("d".into()), ..v2() }, "`database` belongs to `api = \"v1\"`"),
        (InfluxConfig { password: Some(Secret::new("p")), ..v1() }, "`password` is set without `username`"),
        (InfluxConfig { url: "127.0.0.1:8086".into(), ..v1() }, "`url`"),
        (InfluxConfig { url: "http://u:p@h:8086".into(), ..v1() }, "`url` holds credentials"),
        (InfluxConfig { buffer_points: 10, batch_points: 20, ..v1() }, "`buffer_points` (10) must be at least"),
        (InfluxConfig { batch_points: 0, ..v1() }, "`batch_points` must be at least 1"),
        (InfluxConfig { max_backoff_ms: 5, ..v1() }, "`max_backoff_ms` (5) must be at least"),
        (InfluxConfig { tags: BTreeMap::from([("symbol".into(), "x".into())]), ..v1() }, "tag `symbol`"),
        (InfluxConfig { tags: BTreeMap::from([("k".into(), "a\nb".into())]), ..v1() }, "line break"),
    ];
    for (config, expected) in cases {
        let message = config.validate().expect_err(expected).to_string();
        assert!(message.starts_with("[sinks.influx] `"), "{message}");
        assert!(message.contains(expected), "expected `{expected}` in: {message}");
    }
}

// ---------------------------------------------------------------------------
// Requests

#[test]
fn v1_requests_name_the_database_and_precision_with_basic_auth_and_gzip() {
    let mock = Mock::start(|_, _| Reply::status(204));
    let sink = InfluxSink::start(InfluxConfig {
        retention_policy: Some("one year".into()),
        username: Some("u".into()),
        password: Some(Secret::new("p w")),
        ..config(&mock)
    })
    .unwrap();
    let mut w = sink.writer();
    (0..3).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    sink.sync().unwrap();

    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.target, "/write?db=ticks&rp=one+year&precision=ms");
    assert_eq!(r.header("authorization"), Some("Basic dTpwIHc="));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(&r.raw[..2], &[0x1f, 0x8b], "a gzip stream");
    assert_eq!(r.lines(), lines(0..3));
    let stats = sink.stats();
    assert_eq!((stats.points_written, stats.batches_written, stats.buffered_points), (3, 1, 0));
    assert_eq!(stats.bytes_sent, r.raw.len() as u64);
    drop(w);
    sink.close().unwrap();
}

#[test]
fn v2_requests_name_org_bucket_and_precision_with_a_token_and_plain_bodies_without_gzip() {
    let mock = Mock::start(|_, _| Reply::status(204));
    let url = format!("{}/proxy/", mock.url());
    let mut config = InfluxConfig::v2(url, "my org", "b", Secret::new("t0k"));
    config.gzip = false;
    config.flush_interval_ms = 3_600_000;
    let sink = InfluxSink::start(config).unwrap();
    let mut w = sink.writer();
    (0..3).for_each(|i| write_point(&mut w, i));
    w.finish().unwrap();
    sink.sync().unwrap();

    let r = &mock.requests()[0];
    assert_eq!(r.target, "/proxy/api/v2/write?org=my+org&bucket=b&precision=ms");
    assert_eq!(r.header("authorization"), Some("Token t0k"));
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(String::from_utf8(r.raw.clone()).unwrap(), lines(0..3).join("\n") + "\n");
    drop(w);
    sink.close().unwrap();
}

#[test]
fn skipped_points_are_counted_and_not_sent() {
    let mock = Mock::start(|_, _| Reply::status(204));
    let sink = InfluxSink::start(config(&mock)).unwrap();
    let mut w = sink.writer();
    w.write("s", &["v".into()], "S", T0, &[f64::NAN]).unwrap();
    w.write("s", &["v".into()], "S\n", T0, &[1.0]).unwrap();
    write_point(&mut w, 1);
    w.hand_over().unwrap();
    sink.sync().unwrap();
    let stats = sink.stats();
    assert_eq!((stats.points_skipped_non_finite, stats.points_skipped_unwritable, stats.points_written), (1, 1, 1));
    assert_eq!(mock.accepted(), lines(1..2));
    drop(w);
    sink.close().unwrap();
}

// ---------------------------------------------------------------------------
// Batching

#[test]
fn requests_hold_batch_points_points() {
    let mock = Mock::start(|_, _| Reply::status(204));
    let sink = InfluxSink::start(InfluxConfig { batch_points: 100, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    // Full buffers are handed over by themselves, and full batches posted.
    (0..250).for_each(|i| write_point(&mut w, i));
    eventually("two full batches are posted", || mock.requests().len() == 2);
    assert_eq!(mock.sizes(), [100, 100]);
    // Hand-overs smaller than a batch are gathered, and cut where the
    // batch is full.
    w.hand_over().unwrap(); // 50
    let mut w2 = sink.writer();
    (250..320).for_each(|i| write_point(&mut w2, i));
    w2.hand_over().unwrap(); // 70
    eventually("a third batch is posted", || mock.requests().len() == 3);
    drop((w, w2));
    sink.close().unwrap();
    assert_eq!(mock.sizes(), [100, 100, 100, 20]);
    assert_eq!(mock.accepted(), lines(0..320));
}

#[test]
fn lines_go_out_after_the_flush_interval() {
    let mock = Mock::start(|_, _| Reply::status(204));
    let sink = InfluxSink::start(InfluxConfig { flush_interval_ms: 20, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    // Handed over, and posted by the thread once the oldest is due.
    (0..3).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    eventually("the thread posts a part batch", || mock.requests().len() == 1);
    assert_eq!(mock.accepted(), lines(0..3));
    // A writer hands over by itself when its oldest line is due.
    write_point(&mut w, 3);
    std::thread::sleep(Duration::from_millis(30));
    write_point(&mut w, 4);
    eventually("the writer hands over an old line", || mock.requests().len() == 2);
    assert_eq!(mock.accepted(), lines(0..5));
    drop(w);
    sink.close().unwrap();
}

// ---------------------------------------------------------------------------
// Failures

#[test]
fn failed_requests_are_retried_until_written_without_loss_or_duplicates() {
    let mock = Mock::start(|i, _| match i {
        0 => Reply::error(503, "the server is shutting down"),
        1 => Reply::status(500).header("Retry-After", "0"),
        2 => Reply::status(0), // hangs up without answering
        3 => Reply::error(429, "slow down").header("Retry-After", "0"),
        _ => Reply::status(204),
    });
    let sink = InfluxSink::start(config(&mock)).unwrap();
    let mut w = sink.writer();
    (0..10).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    sink.sync().unwrap();

    let requests = mock.requests();
    assert_eq!(requests.len(), 5);
    assert!(requests.iter().all(|r| r.raw == requests[0].raw), "every retry sends the same body");
    assert_eq!(mock.accepted(), lines(0..10));
    let stats = sink.stats();
    assert_eq!((stats.points_written, stats.batches_written, stats.retries), (10, 1, 4));
    assert!(stats.last_error.unwrap().contains("429"));
    drop(w);
    sink.close().unwrap();
}

#[test]
fn configuration_errors_are_retried_until_fixed() {
    let mock = Mock::start(|i, _| match i {
        0 => Reply::error(404, "database not found: \"ticks\""),
        1 => Reply::error(401, "authorization failed"),
        // Not followed: a redirected POST would turn into a GET.
        2 => Reply::status(301).header("Location", "/elsewhere"),
        _ => Reply::status(204),
    });
    let sink = InfluxSink::start(config(&mock)).unwrap();
    let mut w = sink.writer();
    (0..4).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    sink.sync().unwrap();
    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r.target.starts_with("/write?")));
    assert_eq!(mock.accepted(), lines(0..4));
    assert_eq!(sink.stats().retries, 3);
    drop(w);
    sink.close().unwrap();
}

#[test]
fn rejected_points_are_counted_and_not_retried() {
    let mock = Mock::start(|i, _| match i {
        // InfluxDB 1.x's partial write: it names how many it dropped.
        0 => Reply::error(
            400,
            "partial write: field type conflict: input field \"v\" on measurement \"s\" is type integer, already exists as type float dropped=2",
        ),
        1 => Reply::error(400, "unable to parse 's,symbol=S v=x': invalid number"),
        _ => Reply::status(204),
    });
    let sink = InfluxSink::start(config(&mock)).unwrap();
    let mut w = sink.writer();
    (0..5).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    sink.sync().unwrap();
    (5..9).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    sink.sync().unwrap();
    write_point(&mut w, 9);
    w.hand_over().unwrap();
    sink.sync().unwrap();

    assert_eq!(mock.sizes(), [5, 4, 1], "nothing is retried");
    let stats = sink.stats();
    assert_eq!((stats.points_rejected, stats.points_written, stats.retries), (2 + 4, 3 + 1, 0));
    assert!(stats.last_error.unwrap().contains("unable to parse"));
    drop(w);
    sink.close().unwrap();
}

#[test]
fn too_large_requests_are_split_in_halves_until_they_fit() {
    // More than 3 lines is too large, and so is point 7 on its own.
    let mock = Mock::start(|_, r| {
        if r.lines().len() > 3 || r.text.contains(&line(7)) { Reply::status(413) } else { Reply::status(204) }
    });
    let sink = InfluxSink::start(InfluxConfig { batch_points: 10, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    (0..10).for_each(|i| write_point(&mut w, i));
    sink.sync().unwrap();

    // 10 → 5 + 5; each 5 → 2 + 3; the 3 holding point 7 → 1 (refused on
    // its own) + 2.
    assert_eq!(mock.sizes(), [10, 5, 2, 3, 5, 2, 3, 1, 2]);
    let expected: Vec<String> = (0..10).filter(|&i| i != 7).map(line).collect();
    assert_eq!(mock.accepted(), expected, "every other point once, in order");
    let stats = sink.stats();
    assert_eq!((stats.points_written, stats.points_rejected), (9, 1));
    drop(w);
    sink.close().unwrap();
}

#[test]
fn a_full_buffer_blocks_writers_until_the_server_is_back() {
    let up = Arc::new(AtomicBool::new(false));
    let server_up = up.clone();
    let mock =
        Mock::start(move |_, _| if server_up.load(Ordering::SeqCst) { Reply::status(204) } else { Reply::status(503) });
    let sink = InfluxSink::start(InfluxConfig { batch_points: 2, buffer_points: 4, ..config(&mock) }).unwrap();
    let (done_tx, done) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut w = sink.writer();
            for i in 0..6 {
                // Every second point fills the writer's batch and hands it over.
                write_point(&mut w, i);
                done_tx.send(i).unwrap();
            }
        });
        let wait = Duration::from_secs(20);
        for i in 0..5 {
            assert_eq!(done.recv_timeout(wait), Ok(i), "4 points fit in the buffer");
        }
        eventually("the sink is retrying", || sink.stats().retries >= 2);
        // Points 4 and 5 would make 6 unwritten: the writer waits, however
        // long the server stays down (here, until we bring it up).
        assert_eq!(done.recv_timeout(Duration::from_millis(300)), Err(mpsc::RecvTimeoutError::Timeout));
        assert_eq!(sink.stats().buffered_points, 4);
        up.store(true, Ordering::SeqCst);
        assert_eq!(done.recv_timeout(wait), Ok(5), "the writer goes on once the server is back");
    });
    sink.sync().unwrap();
    assert_eq!(mock.accepted(), lines(0..6));
    sink.close().unwrap();
}

#[test]
fn close_gives_up_after_close_timeout_and_says_how_many_points_are_left() {
    let mock = Mock::start(|_, _| Reply::error(503, "down for maintenance"));
    let sink = InfluxSink::start(InfluxConfig { close_timeout_ms: 50, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    (0..5).for_each(|i| write_point(&mut w, i));
    w.hand_over().unwrap();
    let message = sink.close().unwrap_err().to_string();
    assert!(message.contains("5 points were still not written"), "{message}");
    assert!(message.contains("down for maintenance"), "{message}");
    // The writer outlived the sink: what it hands over now is refused.
    write_point(&mut w, 5);
    assert!(matches!(w.hand_over(), Err(InfluxError::Closed { points: 1 })));
}

#[test]
fn points_handed_over_after_stopping_began_are_written_until_the_sink_closes() {
    // The host starts the close deadline while workers still take their
    // last checkpoint; their last points must not find the thread gone.
    let mock = Mock::start(|_, _| Reply::status(204));
    let sink = InfluxSink::start(InfluxConfig { close_timeout_ms: 5_000, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    write_point(&mut w, 0);
    w.hand_over().unwrap();
    sink.begin_close();
    eventually("the first point is written", || sink.stats().points_written == 1);
    // The thread had nothing left, but the sink is not closed yet.
    std::thread::sleep(Duration::from_millis(100));
    write_point(&mut w, 1);
    w.hand_over().unwrap();
    drop(w);
    let stats = sink.close().unwrap();
    assert_eq!(stats.points_written, 2);
    assert_eq!(mock.accepted(), lines(0..2));
}

#[test]
fn a_writer_after_the_close_deadline_gave_up_is_told_why() {
    let mock = Mock::start(|_, _| Reply::error(503, "down for maintenance"));
    let sink = InfluxSink::start(InfluxConfig { close_timeout_ms: 50, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    write_point(&mut w, 0);
    w.hand_over().unwrap();
    sink.begin_close();
    eventually("the thread gives up", || {
        write_point(&mut w, 1);
        match w.hand_over() {
            Err(InfluxError::Unwritten { last_error, .. }) => {
                assert!(last_error.contains("down for maintenance"), "{last_error}");
                true
            }
            Ok(()) => false,
            Err(e) => panic!("unexpected: {e}"),
        }
    });
    assert!(sink.close().is_err(), "the first point was never written");
}

#[test]
fn many_writers_lose_nothing_and_keep_their_order() {
    let mock = Mock::start(|i, _| if i % 3 == 1 { Reply::status(503) } else { Reply::status(204) });
    let sink = InfluxSink::start(InfluxConfig { batch_points: 64, buffer_points: 256, ..config(&mock) }).unwrap();
    std::thread::scope(|s| {
        for writer in 0..4 {
            let sink = &sink;
            s.spawn(move || {
                let mut w = sink.writer();
                for i in 0..2000 {
                    w.write("s", &["v".into()], &format!("W{writer}"), T0 + i, &[i as f64]).unwrap();
                    if i % 300 == 0 {
                        w.hand_over().unwrap();
                    }
                }
            });
        }
    });
    let stats = sink.close().unwrap();
    assert_eq!(stats.points_written, 8000);
    each_symbol_once_in_order(&mock, "W", 4, 2000);
}

#[test]
fn series_spread_over_connections_stay_in_order_and_are_all_written_once() {
    // Slow answers, and every third request refused once, so the lanes
    // overlap and retry while others go on.
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now, max) = (in_flight.clone(), most.clone());
    let mock = Mock::start(move |i, _| {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(15));
        now.fetch_sub(1, Ordering::SeqCst);
        if i % 3 == 2 { Reply::status(503) } else { Reply::status(204) }
    });
    let sink = InfluxSink::start(InfluxConfig { connections: 3, batch_points: 10, ..config(&mock) }).unwrap();
    let mut w = sink.writer();
    for i in 0..50 {
        for k in 0..20 {
            w.write("s", &["v".to_string()], &format!("S{k}"), T0 + i, &[i as f64]).unwrap();
        }
    }
    w.hand_over().unwrap();
    sink.sync().unwrap();
    let stats = sink.close().unwrap();
    assert_eq!((stats.points_written, stats.buffered_points), (1000, 0));
    assert!(stats.retries > 0, "{stats:?}");
    assert!(most.load(Ordering::SeqCst) >= 2, "requests overlapped on several connections");
    each_symbol_once_in_order(&mock, "S", 20, 50);
}

#[test]
fn points_with_unwritable_names_are_not_merged_into_ones_that_would_be_written() {
    // The unwritable field is finite in the first point only: plain, that
    // point is skipped and the second written; merged it must be the same.
    let run = |coalesce: bool| {
        let mock = Mock::start(|_, _| Reply::status(204));
        let sink = InfluxSink::start(InfluxConfig { coalesce, ..config(&mock) }).unwrap();
        let mut w = sink.writer();
        let fields = ["v".to_string(), "odd\n".to_string()];
        w.write("s", &fields, "S", T0, &[1.0, 5.0]).unwrap();
        w.write("s", &fields, "S", T0, &[2.0, f64::NAN]).unwrap();
        w.hand_over().unwrap();
        sink.sync().unwrap();
        let stats = sink.close().unwrap();
        (mock.accepted(), stats.points_skipped_unwritable, stats.points_coalesced)
    };
    let want = (vec![format!("s,symbol=S v=2.0 {T0}")], 1, 0);
    assert_eq!(run(false), want);
    assert_eq!(run(true), want);
}

#[test]
fn each_lane_waits_the_flush_interval_from_its_own_oldest_point() {
    let mock = Mock::start(|_, _| Reply::status(204));
    let config = InfluxConfig { connections: 2, flush_interval_ms: 300, ..config(&mock) };
    let sink = InfluxSink::start(config).unwrap();
    // Two symbols on different lanes.
    let lane = |symbol: &str| route_hash("s", symbol) % 2;
    let other = (0..).map(|k| format!("B{k}")).find(|s| lane(s) != lane("A")).unwrap();
    let mut w = sink.writer();
    // Both lines handed over together, the second written 150 ms later.
    w.write("s", &["v".to_string()], "A", T0, &[1.0]).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let written = Instant::now();
    w.write("s", &["v".to_string()], &other, T0, &[2.0]).unwrap();
    w.hand_over().unwrap();
    let posted = |symbol: &str| mock.accepted().iter().any(|l| l.contains(&format!("symbol={symbol} ")));
    eventually("the first lane posts its point", || posted("A"));
    eventually("the second lane posts its point", || posted(&other));
    // Not at the first lane's deadline: its own point was 150 ms younger.
    assert!(written.elapsed() >= Duration::from_millis(290), "posted {:?} after it was written", written.elapsed());
    drop(w);
    sink.close().unwrap();
}

/// What a server that merges points of equal measurement, tags and time
/// stores from `lines` taken in order: per point, each field's last value.
fn server_view(lines: &[String]) -> BTreeMap<(String, i64), BTreeMap<String, String>> {
    let mut stored: BTreeMap<(String, i64), BTreeMap<String, String>> = BTreeMap::new();
    for line in lines {
        let mut parts = line.split(' ');
        let (key, fields, ts) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let point = stored.entry((key.to_string(), ts.parse().unwrap())).or_default();
        for field in fields.split(',') {
            let (name, value) = field.split_once('=').unwrap();
            point.insert(name.to_string(), value.to_string());
        }
    }
    stored
}

#[test]
fn coalesced_points_leave_the_server_what_the_plain_ones_would() {
    // Three series × four symbols over three connections, times often
    // equal and sometimes going back, some fields NaN, hand-overs at
    // random: once with points merged before posting, once without.
    const POINTS: u64 = 5000;
    let run = |coalesce: bool| {
        let mock = Mock::start(|_, _| Reply::status(204));
        let config = InfluxConfig { connections: 3, batch_points: 50, coalesce, ..config(&mock) };
        let sink = InfluxSink::start(config).unwrap();
        let mut w = sink.writer();
        let mut rng = Rng::new(11);
        let fields = ["a".to_string(), "b".to_string()];
        let mut clock = [0i64; 12];
        for _ in 0..POINTS {
            let key = rng.range(0, 12) as usize;
            clock[key] += rng.range(-1, 3).max(0) - i64::from(rng.range(0, 20) == 0);
            let mut value = || match rng.range(0, 4) {
                0 => f64::NAN,
                n => n as f64,
            };
            let values = [value(), value()];
            let (series, symbol) = (["vwap", "bars", "rsi"][key % 3], format!("K{}", key / 3));
            w.write(series, &fields, &symbol, T0 + clock[key], &values).unwrap();
            if rng.range(0, 200) == 0 {
                w.hand_over().unwrap();
            }
        }
        w.hand_over().unwrap();
        sink.sync().unwrap();
        let stats = sink.close().unwrap();
        (server_view(&mock.accepted()), stats)
    };
    let (plain, plain_stats) = run(false);
    let (merged, merged_stats) = run(true);
    assert_eq!(plain, merged, "the server holds the same points either way");
    assert_eq!(plain_stats.points_coalesced, 0);
    assert!(merged_stats.points_coalesced > POINTS / 4, "{merged_stats:?}");
    // Every point was posted, merged away or skipped (no finite field).
    for s in [&plain_stats, &merged_stats] {
        assert_eq!(s.points_written + s.points_coalesced + s.points_skipped_non_finite, POINTS, "{s:?}");
    }
    assert!(merged_stats.points_written < plain_stats.points_written);
}

#[test]
fn connections_must_be_sane_and_share_the_buffer() {
    let mock = Mock::start(|_, _| Reply::status(204));
    for (connections, buffer_points, problem) in
        [(0, 200_000, "must be from 1 to 64"), (65, 200_000, "must be from 1 to 64"), (4, 3_999, "× `connections`")]
    {
        let config = InfluxConfig { connections, buffer_points, batch_points: 1000, ..config(&mock) };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains(problem), "{message}");
    }
    let sink =
        InfluxSink::start(InfluxConfig { connections: 4, buffer_points: 4_000, batch_points: 1000, ..config(&mock) })
            .unwrap();
    assert_eq!(sink.stats().buffer_capacity, 4_000);
    sink.close().unwrap();
}
