//! `tickfold produce`: a synthetic market into Kafka.
//!
//! Trades come from [`crate::synthetic::Market`] (seeded geometric Brownian
//! motion per symbol), encoded as flat JSON (`{"symbol","ts","price","size"}`),
//! keyed by symbol so that a symbol always lands in the same partition (and
//! its trades stay in order there). Paced, event time follows the wall
//! clock at the requested rate; unpaced, it is a preload as fast as the
//! broker takes it.

use std::time::{Duration, Instant};

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use crate::synthetic::Market;

/// What to produce, and where.
#[derive(Clone, Debug)]
pub struct ProduceOptions {
    /// `host:port` list of the brokers.
    pub brokers: String,
    /// The topic (it must exist).
    pub topic: String,
    /// Symbols to trade.
    pub symbols: Vec<String>,
    /// Trades per second of event time.
    pub rate: f64,
    /// How many trades.
    pub trades: u64,
    /// Event time of the first trade, ms since the Unix epoch.
    pub start_ms: i64,
    /// Seed of the market.
    pub seed: u64,
    /// Send at `rate` in wall time (a live feed), or as fast as possible.
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
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        // Every record acknowledged by the leader is enough for a feed.
        .set("acks", "1")
        .create_with_context(Deliveries::default())
        .map_err(|source| ProduceError::Client { brokers: options.brokers.clone(), source })?;

    let symbols: Vec<&str> = options.symbols.iter().map(String::as_str).collect();
    let market = Market::new(options.seed, &symbols, options.start_ms, options.rate);
    let started = Instant::now();
    let mut last_report = started;
    let mut sent = 0;
    let mut payload = String::with_capacity(128);
    for trade in market.take(options.trades as usize) {
        if options.paced {
            let due = Duration::from_millis((trade.ts - options.start_ms).max(0) as u64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let symbol = symbols[trade.symbol];
        payload.clear();
        // `{:?}` writes the shortest text that reads back to the same f64.
        use std::fmt::Write;
        let _ = write!(
            payload,
            r#"{{"symbol":"{symbol}","ts":{},"price":{:?},"size":{:?}}}"#,
            trade.ts, trade.price, trade.size
        );
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
    }
    producer.flush(Duration::from_secs(60)).map_err(|_| ProduceError::Unflushed(producer.in_flight_count() as u64))?;
    progress(sent, started.elapsed());
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let first_error = deliveries.first_error.lock().expect("delivery lock").clone();
    Ok(ProduceStats { sent, failed, first_error })
}
