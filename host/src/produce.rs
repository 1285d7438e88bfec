//! `tickfold produce`: trades into Kafka, from a synthetic market or a file.
//!
//! Trades come from [`crate::synthetic::Market`] (seeded geometric Brownian
//! motion per symbol) or from a CSV/JSONL/Parquet file of trades, are
//! encoded as flat JSON (`{"symbol","ts","price","size"}`), and keyed by
//! symbol so that a symbol always lands in the same partition (and its
//! trades stay in order there). Paced, a synthetic trade is sent when the
//! wall clock reaches its event time (so a start in the past sends that
//! history at once and then goes on live), and a file plays as recorded
//! (times `speed`); unpaced, everything is a preload as fast as the broker
//! takes it.

use std::time::{Duration, Instant};

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use crate::source::file::{FileError, FileSource};
use crate::synthetic::Market;

/// Where the trades come from.
#[derive(Clone, Debug)]
pub enum Feed {
    /// The seeded synthetic market.
    Synthetic {
        /// Symbols to trade.
        symbols: Vec<String>,
        /// Trades per second of event time.
        rate: f64,
        /// Event time of the first trade, ms since the Unix epoch.
        start_ms: i64,
        /// Seed of the market.
        seed: u64,
    },
    /// Finnhub's websocket trade stream, forwarded as it comes (never
    /// paced, never ending unless `trades` is reached).
    Finnhub {
        /// `wss://ws.finnhub.io` (a `ws://` stand-in in tests).
        url: String,
        /// The API key (from the environment, never logged).
        token: String,
        /// Symbols to subscribe to.
        symbols: Vec<String>,
    },
    /// A file of trades (columns symbol, ts, price, size), in file order.
    File {
        path: std::path::PathBuf,
        /// Paced replay runs this many times faster than recorded.
        speed: f64,
    },
}

/// What to produce, and where.
#[derive(Clone, Debug)]
pub struct ProduceOptions {
    /// `host:port` list of the brokers.
    pub brokers: String,
    /// The topic (it must exist).
    pub topic: String,
    /// The trades.
    pub feed: Feed,
    /// At most this many trades.
    pub trades: u64,
    /// Send in step with event time (a live feed), or as fast as possible.
    pub paced: bool,
}

/// What a run produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceStats {
    /// Records handed to the producer.
    pub sent: u64,
    /// Records the broker did not acknowledge.
    pub failed: u64,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
}

/// Counts the records the broker did not acknowledge.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error.lock().expect("delivery lock").get_or_insert_with(|| error.to_string());
        }
    }
}

/// Something that stopped the producer.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The client could not be made (a bad broker list, say).
    #[error("cannot create a Kafka producer for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    /// A record could not be queued.
    #[error("cannot queue a record for topic `{topic}`: {source}")]
    Send { topic: String, source: KafkaError },
    /// The input file could not be read, or has no trades' columns.
    #[error(transparent)]
    File(#[from] FileError),
    /// The input file lacks a trade column.
    #[error("{path}: a file of trades needs the fields `price` and `size` (it has: {have})")]
    NotTrades { path: String, have: String },
    /// Finnhub's websocket refused us.
    #[error("Finnhub at {url}: {reason}")]
    Finnhub { url: String, reason: String },
    /// Records were still unacknowledged when the flush timed out.
    #[error("{0} records were not acknowledged by the broker within 60 s; is it up?")]
    Unflushed(u64),
}

/// Produces the market, calling `progress(sent, elapsed)` about once a second.
pub fn produce(
    options: &ProduceOptions,
    mut progress: impl FnMut(u64, Duration),
) -> Result<ProduceStats, ProduceError> {
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        // Batches of many small records: a few ms of lingering fills them.
        // (1 ms for paced feeds was measured worse end to end at 100k
        // trades/s: five times the requests, and the broker shares the
        // cores; see docs/performance.md.)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        // Every record acknowledged by the leader is enough for a feed.
        .set("acks", "1")
        .create_with_context(Deliveries::default())
        .map_err(|source| ProduceError::Client { brokers: options.brokers.clone(), source })?;

    let started = Instant::now();
    let mut last_report = started;
    let mut sent = 0;
    let mut payload = String::with_capacity(128);
    let mut first_ts = None;
    let mut send = |symbol: &str, ts: i64, price: f64, size: f64| -> Result<bool, ProduceError> {
        if sent >= options.trades {
            return Ok(false);
        }
        if options.paced {
            let wait = match &options.feed {
                // Event time is wall time: a start in the past is history,
                // sent at once, and the market goes on live from now.
                Feed::Synthetic { .. } => {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    Duration::from_millis((ts - now_ms).max(0) as u64)
                }
                // As recorded, from the file's first trade, times `speed`.
                Feed::File { speed, .. } => {
                    let origin = *first_ts.get_or_insert(ts);
                    let due = Duration::from_secs_f64((ts - origin).max(0) as f64 / 1000.0 / speed);
                    due.saturating_sub(started.elapsed())
                }
                // A live feed paces itself.
                Feed::Finnhub { .. } => Duration::ZERO,
            };
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        payload.clear();
        // `{:?}` writes the shortest text that reads back to the same f64.
        use std::fmt::Write;
        let name = serde_json::Value::from(symbol);
        let _ = write!(payload, r#"{{"symbol":{name},"ts":{ts},"price":{price:?},"size":{size:?}}}"#);
        let mut record = BaseRecord::to(&options.topic).key(symbol).payload(payload.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                // The local queue is full: let the background thread drain it.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => return Err(ProduceError::Send { topic: options.topic.clone(), source }),
            }
        }
        sent += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(sent, started.elapsed());
        }
        Ok(true)
    };
    match &options.feed {
        Feed::Synthetic { symbols, rate, start_ms, seed } => {
            let symbols: Vec<&str> = symbols.iter().map(String::as_str).collect();
            for trade in Market::new(*seed, &symbols, *start_ms, *rate) {
                if !send(symbols[trade.symbol], trade.ts, trade.price, trade.size)? {
                    break;
                }
            }
        }
        Feed::Finnhub { url, token, symbols } => {
            let decoder = crate::decode::Decoder::new(crate::decode::Shape::Finnhub, None);
            let mut trades = Vec::new();
            let mut backoff = Duration::from_millis(500);
            let mut first = true;
            'connection: loop {
                // Every reconnection waits, doubling up to 30 s; data
                // arriving resets the wait.
                if !first {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                first = false;
                let mut socket = match finnhub_connect(url, token, symbols) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("Finnhub: {e}; reconnecting in {backoff:?}");
                        continue;
                    }
                };
                loop {
                    let message = match socket.read() {
                        Ok(tungstenite::Message::Text(text)) => {
                            backoff = Duration::from_millis(500);
                            text
                        }
                        Ok(tungstenite::Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {
                            tracing::warn!("Finnhub closed the connection; reconnecting in {backoff:?}");
                            continue 'connection;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!("Finnhub: {e}; reconnecting in {backoff:?}");
                            continue 'connection;
                        }
                    };
                    trades.clear();
                    if let Err(e) = decoder.decode(message.as_bytes(), &mut trades) {
                        tracing::warn!("Finnhub sent a message we cannot read ({e}): {message:.200}");
                        continue;
                    }
                    for t in &trades {
                        if !send(&t.symbol, t.ts, t.price, t.size)? {
                            let _ = socket.close(None);
                            break 'connection;
                        }
                    }
                }
            }
        }
        Feed::File { path, .. } => {
            let mut file = FileSource::open(path, 8192)?;
            let column = |name: &str| file.fields().iter().position(|f| f == name);
            let (Some(price), Some(size)) = (column("price"), column("size")) else {
                return Err(ProduceError::NotTrades {
                    path: path.display().to_string(),
                    have: file.fields().join(", "),
                });
            };
            'file: while let Some(chunk) = file.next_chunk()? {
                for i in 0..chunk.len() {
                    if !send(&chunk.symbols[i], chunk.ts[i], chunk.fields[price][i], chunk.fields[size][i])? {
                        break 'file;
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).map_err(|_| ProduceError::Unflushed(producer.in_flight_count() as u64))?;
    progress(sent, started.elapsed());
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let first_error = deliveries.first_error.lock().expect("delivery lock").clone();
    Ok(ProduceStats { sent, failed, first_error })
}

type Socket = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// Connects to Finnhub's trade stream and subscribes to `symbols`.
fn finnhub_connect(url: &str, token: &str, symbols: &[String]) -> Result<Socket, ProduceError> {
    let fail = |reason: String| ProduceError::Finnhub { url: url.to_string(), reason };
    let with_token = format!("{url}{}token={token}", if url.contains('?') { '&' } else { '?' });
    let (mut socket, response) = tungstenite::connect(with_token.as_str()).map_err(|e| match e {
        tungstenite::Error::Http(r) if r.status() == 401 => {
            fail("the API key was refused (check FINNHUB_API_KEY)".into())
        }
        // The error may echo the URL; never the token.
        e => fail(e.to_string().replace(token, "***")),
    })?;
    // Finnhub pings every few seconds: a minute of silence is a dead
    // connection, not a quiet market.
    let timeout = Some(Duration::from_secs(60));
    let _ = match socket.get_ref() {
        tungstenite::stream::MaybeTlsStream::Plain(s) => s.set_read_timeout(timeout),
        tungstenite::stream::MaybeTlsStream::Rustls(s) => s.sock.set_read_timeout(timeout),
        _ => Ok(()),
    };
    tracing::info!(status = %response.status(), "connected to Finnhub; subscribing to {} symbols", symbols.len());
    for symbol in symbols {
        let subscribe = serde_json::json!({ "type": "subscribe", "symbol": symbol }).to_string();
        socket.send(tungstenite::Message::text(subscribe)).map_err(|e| fail(e.to_string()))?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Finnhub stand-in: checks the token and the subscriptions, sends a
    /// ping, a trade message, garbage, then closes.
    #[test]
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    fn finnhub_messages_are_subscribed_decoded_and_forwarded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut path = String::new();
            let mut ws = tungstenite::accept_hdr(stream, |req: &tungstenite::handshake::server::Request, res| {
                path = req.uri().to_string();
                Ok(res)
            })
            .unwrap();
            let mut subscribed = Vec::new();
            for _ in 0..2 {
                let m = ws.read().unwrap().into_text().unwrap();
                let v: serde_json::Value = serde_json::from_str(&m).unwrap();
                assert_eq!(v["type"], "subscribe");
                subscribed.push(v["symbol"].as_str().unwrap().to_string());
            }
            ws.send(tungstenite::Message::text(r#"{"type":"ping"}"#)).unwrap();
            ws.send(tungstenite::Message::text(
                r#"{"type":"trade","data":[{"s":"AAPL","p":189.5,"t":1700000000000,"v":100,"c":["1"]},{"s":"BTC-USD","p":37000.25,"t":1700000000001,"v":0.5}]}"#,
            ))
            .unwrap();
            ws.send(tungstenite::Message::text("not json")).unwrap();
            let _ = ws.close(None);
            (path, subscribed)
        });
        let mut socket = finnhub_connect(&url, "secret-key", &["AAPL".into(), "BTC-USD".into()]).unwrap();
        let decoder = crate::decode::Decoder::new(crate::decode::Shape::Finnhub, None);
        let mut trades = Vec::new();
        let mut bad = 0;
        while let Ok(m) = socket.read() {
            if let tungstenite::Message::Text(text) = m
                && decoder.decode(text.as_bytes(), &mut trades).is_err()
            {
                bad += 1;
            }
        }
        let (path, subscribed) = server.join().unwrap();
        assert_eq!(path, "/?token=secret-key");
        assert_eq!(subscribed, ["AAPL", "BTC-USD"]);
        assert_eq!(bad, 1);
        assert_eq!(trades.len(), 2);
        assert_eq!(
            (trades[1].symbol.as_str(), trades[1].ts, trades[1].price, trades[1].size),
            ("BTC-USD", 1_700_000_000_001, 37000.25, 0.5)
        );
    }
}
