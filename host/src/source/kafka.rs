//! Kafka partitions: read side by side, decoded, each with its own
//! watermark; what cannot be used goes to the dead-letter topic.
//!
//! One [`PartitionReader`] per worker reads the partitions that worker owns
//! (ownership is a pure function of partition and worker count, and
//! partitions are `assign`ed, not subscribed: a restarted host gets them at
//! once instead of waiting out a dead member's session). Each partition has
//! its own queue, and a poll takes at most `max_batch` records from each in
//! turn: librdkafka left to itself hands over one partition's whole backlog
//! before the next, which would hold every other partition's data back
//! behind the slowest watermark.
//!
//! Per partition, the watermark is its newest event time minus the allowed
//! lateness; a trade below it (or below what the worker has already
//! promised downstream) is late. The worker's watermark is the minimum
//! over its partitions that are not idle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::decode::{Decoder, Trade};
use crate::source::Row;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

/// Something that stopped the source.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// A client could not be made or could not reach the brokers.
    #[error("Kafka at {brokers}: {what}: {source}; check `[kafka] brokers` and that the broker is up")]
    Client { brokers: String, what: &'static str, source: KafkaError },
    /// The topic does not exist.
    #[error(
        "topic `{topic}` does not exist on {brokers}; create it (e.g. `tansu topic create {topic} --partitions 4`) or fix `[kafka] topic`"
    )]
    NoTopic { topic: String, brokers: String },
}

/// Where a partition starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The oldest record.
    Earliest,
    /// Records appended from now on.
    Latest,
    /// The group's committed offset, else the oldest.
    Committed,
    /// This offset (a checkpoint's).
    At(i64),
}

/// What a partition reader needs to know.
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub allowed_lateness_ms: i64,
    pub idle_timeout: Duration,
    pub max_batch: usize,
    /// Late trades go to the dead-letter topic (else they are dropped).
    pub dead_letter_late: bool,
    /// librdkafka settings over ours.
    pub options: BTreeMap<String, String>,
}

/// Counts shared by every reader of a run.
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Records read.
    pub records: AtomicU64,
    /// Trades decoded and sent on.
    pub trades: AtomicU64,
    /// Records that could not be decoded.
    pub malformed: AtomicU64,
    /// Trades below their partition's watermark.
    pub late: AtomicU64,
    /// Records sent to the dead-letter topic (malformed and late).
    pub dead_lettered: AtomicU64,
    /// Per partition, where the host is and where the log ends.
    pub partitions: std::sync::Mutex<BTreeMap<i32, PartitionProgress>>,
}

/// One partition's progress, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The next offset the host will read (`None` before the first record).
    pub position: Option<i64>,
    /// The log's end as the broker last reported it (librdkafka's
    /// statistics, every second; `None` until the first report).
    pub high_watermark: Option<i64>,
}

impl PartitionProgress {
    /// Records in the log the host has not read yet, when both ends are
    /// known. (tansu's memory engine can report a high watermark below the
    /// log's end: there this can read low, never negative.)
    pub fn lag(&self) -> Option<i64> {
        Some((self.high_watermark? - self.position.unwrap_or(0)).max(0))
    }
}

/// A poll's counts, before they are added to [`SourceCounters`].
#[derive(Default)]
struct LocalCounts {
    records: u64,
    trades: u64,
    malformed: u64,
    late: u64,
    dead_lettered: u64,
}

impl LocalCounts {
    fn add_to(&mut self, shared: &SourceCounters) {
        let c = std::mem::take(self);
        for (n, to) in [
            (c.records, &shared.records),
            (c.trades, &shared.trades),
            (c.malformed, &shared.malformed),
            (c.late, &shared.late),
            (c.dead_lettered, &shared.dead_lettered),
        ] {
            if n > 0 {
                to.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// The number of partitions of `topic`. `options` may carry connection
/// settings (security, SASL, SSL); the others are left out.
pub fn partition_count(
    brokers: &str,
    topic: &str,
    options: &BTreeMap<String, String>,
) -> Result<usize, KafkaSourceError> {
    let client = |what, source| KafkaSourceError::Client { brokers: brokers.to_string(), what, source };
    let consumer: BaseConsumer =
        client_config(brokers, options).create().map_err(|e| client("creating a client", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| client("reading the topic's metadata", e))?;
    let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Err(KafkaSourceError::NoTopic { topic: topic.into(), brokers: brokers.into() });
    }
    Ok(partitions)
}

/// Commits positions to the consumer group, so that Kafka's tools show how
/// far the host got and `start = "committed"` resumes there (a restart with
/// checkpoints reads its checkpoint, never the group).
///
/// One client for the whole run, on a thread of its own, so that a
/// checkpoint never waits on a busy broker. (Creating a client and
/// committing synchronously at every checkpoint held the next one back by
/// 2-6 s against tansu's SQLite engine, which answers one request at a
/// time, each fetch reading up to 5 MiB from SQLite.) At most one commit is
/// in flight: while the broker has not answered, newer positions replace
/// the waiting ones, so a slow broker gets fewer commits instead of a
/// growing queue of stale ones. A failed commit is logged and the next one
/// covers it.
///
/// (Synchronous commits on a thread rather than librdkafka's asynchronous
/// ones: the answers to those never reached `poll` of a consumer with no
/// assignment, here.)
pub struct GroupCommitter {
    shared: Arc<CommitShared>,
}

#[derive(Default)]
struct CommitShared {
    state: std::sync::Mutex<CommitState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct CommitState {
    /// The newest positions not sent yet.
    waiting: Option<BTreeMap<i32, i64>>,
    /// A commit is with the broker.
    busy: bool,
    /// No more commits: the thread ends once nothing waits.
    closed: bool,
}

impl CommitShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl GroupCommitter {
    /// A client of `options.group` on `options.brokers` (it connects in the
    /// background) and its thread.
    pub fn new(options: &ReaderOptions) -> Result<Self, KafkaSourceError> {
        let client = |what, source| KafkaSourceError::Client { brokers: options.brokers.clone(), what, source };
        let consumer: BaseConsumer = client_config(&options.brokers, &options.options)
            .set("group.id", &options.group)
            .create()
            .map_err(|e| client("creating a client to commit offsets", e))?;
        let shared = Arc::new(CommitShared::default());
        let topic = options.topic.clone();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("group-commits".into())
            .spawn(move || commit_loop(&consumer, &topic, &s))
            .map_err(|e| {
                client("starting the thread that commits offsets", KafkaError::ClientCreation(e.to_string()))
            })?;
        Ok(GroupCommitter { shared })
    }

    /// Commits each partition's next offset: at once if no commit is with
    /// the broker, else after it (unless newer positions come first). Does
    /// not wait.
    pub fn commit(&self, positions: &BTreeMap<i32, i64>) {
        if positions.is_empty() {
            return;
        }
        self.shared.lock().waiting = Some(positions.clone());
        self.shared.changed.notify_all();
    }

    /// Waits up to `within` until every commit is sent and answered; true
    /// if they all were.
    pub fn wait(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut state = self.shared.lock();
        while state.busy || state.waiting.is_some() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Drop for GroupCommitter {
    /// The thread ends after what waits is sent; it is not joined, so that a
    /// broker that does not answer cannot hold the host's exit.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

fn commit_loop(consumer: &BaseConsumer, topic: &str, shared: &CommitShared) {
    loop {
        let positions = {
            let mut state = shared.lock();
            loop {
                if let Some(p) = state.waiting.take() {
                    state.busy = true;
                    break p;
                }
                if state.closed {
                    return;
                }
                (state, _) =
                    shared.changed.wait_timeout(state, Duration::from_secs(1)).unwrap_or_else(|e| e.into_inner());
                // The client's own events (connection errors while the
                // broker is away) queue up until polled: take them, so a
                // long outage does not pile them up.
                drop(state);
                for _ in 0..64 {
                    if let Some(Err(e)) = consumer.poll(Duration::ZERO) {
                        tracing::debug!("Kafka client committing offsets: {e}");
                    }
                }
                state = shared.lock();
            }
        };
        let mut list = TopicPartitionList::new();
        let result = positions
            .iter()
            .try_for_each(|(&p, &offset)| list.add_partition_offset(topic, p, Offset::Offset(offset)))
            .and_then(|()| consumer.commit(&list, rdkafka::consumer::CommitMode::Sync));
        if let Err(e) = result {
            tracing::warn!(
                "committing offsets to the consumer group: {e}; Kafka's tools show an older position until a later commit goes through"
            );
        }
        shared.lock().busy = false;
        shared.changed.notify_all();
    }
}

/// Commits `positions` once and waits up to `within` for the answer (the
/// end of a run).
pub fn commit_positions(
    options: &ReaderOptions,
    positions: &BTreeMap<i32, i64>,
    within: Duration,
) -> Result<(), KafkaSourceError> {
    let client = |what, source| KafkaSourceError::Client { brokers: options.brokers.clone(), what, source };
    if positions.is_empty() {
        return Ok(());
    }
    let committer = GroupCommitter::new(options)?;
    committer.commit(positions);
    if !committer.wait(within) {
        return Err(client(
            "committing offsets to the consumer group",
            KafkaError::Global(RDKafkaErrorCode::RequestTimedOut),
        ));
    }
    Ok(())
}

/// The partitions worker `index` of `workers` reads.
pub fn owned_partitions(partitions: usize, index: usize, workers: usize) -> Vec<i32> {
    (0..partitions).filter(|p| p % workers == index).map(|p| p as i32).collect()
}

/// The consumer's callbacks: librdkafka reports reaching a partition's
/// end as a global error too (that is news, not an error), and its
/// statistics carry each partition's high watermark.
#[derive(Clone)]
pub struct SourceContext {
    counters: Arc<SourceCounters>,
    topic: String,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let mut partitions = self.counters.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Partition -1 is librdkafka's internal "unassigned" one.
        for (&id, p) in topic.partitions.iter().filter(|(id, p)| **id >= 0 && p.hi_offset >= 0) {
            partitions.entry(id).or_default().high_watermark = Some(p.hi_offset);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!("{reason}")
            }
            e => tracing::error!("Kafka consumer: {e}: {reason}"),
        }
    }
}

impl ConsumerContext for SourceContext {}

/// One partition's progress.
struct Partition {
    id: i32,
    queue: PartitionQueue<SourceContext>,
    /// Newest event time seen.
    max_ts: i64,
    /// Offset of the next record to read, once one has been read.
    next_offset: Option<i64>,
    /// When a record last arrived (or the reader started).
    last_record: Instant,
    /// When a trade last moved the watermark on (or the reader started):
    /// what idleness is judged by, so a partition that carries only
    /// malformed records, late trades or pings goes idle too.
    last_trade: Instant,
    /// The broker said we are at the end (until the next record).
    at_end: bool,
}

impl Partition {
    fn watermark(&self, lateness: i64) -> i64 {
        self.max_ts.saturating_sub(lateness)
    }

    /// Idle: read to its end, and no trade for `timeout`. A partition whose
    /// backlog has not been read yet is never idle, however long its first
    /// fetch takes: taking it for idle would let the others' watermark run
    /// ahead and make its whole backlog late. (A partition whose leader is
    /// down therefore holds the watermark: its lag metric shows why.)
    fn idle(&self, now: Instant, timeout: Duration) -> bool {
        self.at_end && now.duration_since(self.last_trade) >= timeout
    }
}

/// Reads one worker's partitions.
pub struct PartitionReader {
    consumer: Arc<BaseConsumer<SourceContext>>,
    partitions: Vec<Partition>,
    options: ReaderOptions,
    decoder: Decoder,
    dead_letters: Option<Arc<DeadLetters>>,
    counters: Arc<SourceCounters>,
    /// Turn to start the next poll at, so no partition is always first.
    turn: usize,
    /// Counts of the current poll, added to the shared ones once per poll:
    /// an atomic add per record, on counters every worker shares, costs
    /// more than decoding the record.
    local: LocalCounts,
    decoded: Vec<Trade>,
}

impl PartitionReader {
    /// Assigns `partitions` of the topic to a new consumer, starting each
    /// as `start` says. `on_data` is called (from librdkafka's thread) when
    /// a partition's queue gets records, to wake the worker.
    pub fn open(
        options: ReaderOptions,
        partitions: &[(i32, Start)],
        decoder: Decoder,
        dead_letters: Option<Arc<DeadLetters>>,
        counters: Arc<SourceCounters>,
        on_data: impl Fn() + Send + Sync + Clone + 'static,
    ) -> Result<Self, KafkaSourceError> {
        let client = |what, source| KafkaSourceError::Client { brokers: options.brokers.clone(), what, source };
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &options.brokers)
            .set("group.id", &options.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // `committed` with nothing committed yet starts at the oldest.
            .set("auto.offset.reset", "earliest")
            // Fetch big and keep a deep local queue: with librdkafka's
            // defaults a consumer drains small records several times slower
            // than the broker serves them (see DESIGN.md).
            .set("fetch.max.bytes", "67108864")
            .set("max.partition.fetch.bytes", "16777216")
            .set("queued.min.messages", "500000")
            .set("queued.max.messages.kbytes", "262144")
            .set("fetch.wait.max.ms", "5")
            .set("fetch.min.bytes", "1")
            // Each partition's high watermark for the lag metric.
            .set("statistics.interval.ms", "1000");
        for (k, v) in &options.options {
            config.set(k, v);
        }
        let consumer: Arc<BaseConsumer<SourceContext>> = Arc::new(
            config
                .create_with_context(SourceContext { counters: counters.clone(), topic: options.topic.clone() })
                .map_err(|e| client("creating a consumer", e))?,
        );
        let mut assignment = TopicPartitionList::new();
        for &(p, start) in partitions {
            let offset = match start {
                Start::Earliest => Offset::Beginning,
                Start::Latest => Offset::End,
                Start::Committed => Offset::Stored,
                Start::At(o) => Offset::Offset(o),
            };
            assignment.add_partition_offset(&options.topic, p, offset).map_err(|e| client("assigning", e))?;
        }
        consumer.assign(&assignment).map_err(|e| client("assigning partitions", e))?;
        let now = Instant::now();
        let mut owned = Vec::with_capacity(partitions.len());
        for &(id, _) in partitions {
            let mut queue = consumer.split_partition_queue(&options.topic, id).ok_or_else(|| {
                client("splitting a partition's queue", KafkaError::Subscription(options.topic.clone()))
            })?;
            let wake = on_data.clone();
            queue.set_nonempty_callback(wake);
            owned.push(Partition {
                id,
                queue,
                max_ts: i64::MIN,
                next_offset: None,
                last_record: now,
                last_trade: now,
                at_end: false,
            });
        }
        Ok(PartitionReader {
            consumer,
            partitions: owned,
            options,
            decoder,
            dead_letters,
            counters,
            turn: 0,
            local: LocalCounts::default(),
            decoded: Vec::new(),
        })
    }

    /// Reads what is waiting, at most `max_batch` records per partition,
    /// appending on-time trades to `out`. A trade is late below its
    /// partition's watermark or below `floor` (what the worker has already
    /// told the dataflow). Returns how many records it read.
    pub fn poll(&mut self, floor: i64, out: &mut Vec<Row>) -> usize {
        // Serve the consumer's own events (errors, statistics); records of
        // split partitions never arrive here.
        while let Some(event) = self.consumer.poll(Duration::ZERO) {
            match event {
                // Records of split partitions should never come here; one
                // that does would be lost silently, so say so loudly.
                Ok(m) => tracing::error!(
                    partition = m.partition(),
                    offset = m.offset(),
                    "a record arrived on the consumer's main queue and was not processed (a bug)"
                ),
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) => tracing::warn!("Kafka consumer: {e}"),
            }
        }
        let mut read = 0;
        let n = self.partitions.len();
        for i in 0..n {
            let at = (self.turn + i) % n;
            read += self.poll_partition(at, floor, out);
        }
        self.turn = self.turn.wrapping_add(1);
        self.local.add_to(&self.counters);
        if read > 0 {
            let mut progress = self.counters.partitions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for p in &self.partitions {
                progress.entry(p.id).or_default().position = p.next_offset;
            }
        }
        read
    }

    fn poll_partition(&mut self, at: usize, floor: i64, out: &mut Vec<Row>) -> usize {
        let lateness = self.options.allowed_lateness_ms;
        // One clock read per call, not per record: idleness is judged in
        // milliseconds and seconds.
        let now = Instant::now();
        let mut read = 0;
        while read < self.options.max_batch {
            let part = &mut self.partitions[at];
            let Some(result) = part.queue.poll(Duration::ZERO) else { break };
            let message = match result {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => {
                    // Records may follow the end marker in the queue.
                    part.at_end = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(partition = part.id, "Kafka: {e}");
                    break;
                }
            };
            read += 1;
            part.at_end = false;
            part.last_record = now;
            part.next_offset = Some(message.offset() + 1);
            self.local.records += 1;
            let payload = message.payload().unwrap_or_default();
            self.decoded.clear();
            if let Err(e) = self.decoder.decode(payload, &mut self.decoded) {
                self.local.malformed += 1;
                if let Some(dl) = &self.dead_letters {
                    dl.send(message.key(), payload, "malformed", &e.to_string(), part.id, message.offset());
                    self.local.dead_lettered += 1;
                }
                continue;
            }
            for trade in self.decoded.drain(..) {
                let line = part.watermark(lateness).max(floor);
                if trade.ts < line {
                    self.local.late += 1;
                    if let (true, Some(dl)) = (self.options.dead_letter_late, &self.dead_letters) {
                        // One dead letter per late trade, as a flat record,
                        // so a record whose other trades were used is never
                        // replayed whole.
                        let body = format!(
                            r#"{{"symbol":{},"ts":{},"price":{:?},"size":{:?}}}"#,
                            serde_json::Value::from(trade.symbol.as_str()),
                            trade.ts,
                            trade.price,
                            trade.size
                        );
                        let reason = format!(
                            "late: event time {} is below the watermark {line} of partition {} (allowed lateness {lateness} ms)",
                            trade.ts, part.id
                        );
                        dl.send(
                            Some(trade.symbol.as_bytes()),
                            body.as_bytes(),
                            "late",
                            &reason,
                            part.id,
                            message.offset(),
                        );
                        self.local.dead_lettered += 1;
                    }
                    continue;
                }
                part.max_ts = part.max_ts.max(trade.ts);
                part.last_trade = part.last_record;
                self.local.trades += 1;
                out.push(Row {
                    key: trade.symbol,
                    ts: trade.ts,
                    values: smallvec::smallvec![trade.price, trade.size],
                    partition: part.id,
                    offset: message.offset(),
                });
            }
        }
        read
    }

    /// The watermark this worker can promise: the minimum over partitions
    /// that are not idle. `None` when every partition is idle (the caller
    /// then follows the other workers).
    pub fn watermark(&self, now: Instant) -> Option<i64> {
        let lateness = self.options.allowed_lateness_ms;
        self.partitions.iter().filter(|p| !p.idle(now, self.options.idle_timeout)).map(|p| p.watermark(lateness)).min()
    }

    /// Each partition's watermark, for the other workers' idle handling
    /// (`None` for an idle partition).
    pub fn partition_watermarks(&self, now: Instant) -> impl Iterator<Item = (i32, Option<i64>)> + '_ {
        let lateness = self.options.allowed_lateness_ms;
        self.partitions.iter().map(move |p| {
            let active = !p.idle(now, self.options.idle_timeout);
            (p.id, active.then(|| p.watermark(lateness)))
        })
    }

    /// True when every partition is at its end and has been quiet for
    /// `quiet`.
    pub fn drained(&self, now: Instant, quiet: Duration) -> bool {
        self.partitions.iter().all(|p| p.at_end && now.duration_since(p.last_record) >= quiet)
    }

    /// Each partition's place for a checkpoint: the next offset (`-1` if
    /// none was read yet: a restart then starts it as configured) and the
    /// newest event time accepted.
    pub fn checkpoint(&self) -> BTreeMap<i32, crate::checkpoint::PartitionCheckpoint> {
        self.partitions
            .iter()
            .map(|p| {
                let next_offset = p.next_offset.unwrap_or(-1);
                (p.id, crate::checkpoint::PartitionCheckpoint { next_offset, max_ts: p.max_ts })
            })
            .collect()
    }

    /// Takes up each partition's newest event time from a checkpoint (the
    /// offsets are given to [`PartitionReader::open`] as `Start::At`), so
    /// lateness is judged as if the run had never stopped.
    pub fn restore(&mut self, partitions: &BTreeMap<i32, crate::checkpoint::PartitionCheckpoint>) {
        for p in &mut self.partitions {
            if let Some(c) = partitions.get(&p.id) {
                p.max_ts = c.max_ts;
                if c.next_offset >= 0 {
                    p.next_offset = Some(c.next_offset);
                }
            }
        }
    }

    /// One line per partition for the debug log: where it is and why it
    /// holds the worker.
    pub fn describe(&self, now: Instant) -> String {
        let lateness = self.options.allowed_lateness_ms;
        self.partitions
            .iter()
            .map(|p| {
                format!(
                    "p{}: next {:?}, at end {}, quiet {} ms, watermark {}",
                    p.id,
                    p.next_offset,
                    p.at_end,
                    now.duration_since(p.last_record).as_millis(),
                    p.watermark(lateness)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The next offset of each partition that has read a record.
    pub fn positions(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter().filter_map(|p| p.next_offset.map(|o| (p.id, o)))
    }
}

/// The dead-letter topic: a record as it came (or a late trade as a flat
/// record), with headers saying why and where from.
///
/// A dead letter the broker refuses or times out is kept and sent again
/// (while a checkpoint or the end of the run waits for it), never dropped:
/// a checkpoint is written only once the letters of the records before its
/// cut are on the broker, since a restart does not read those records
/// again.
pub struct DeadLetters {
    producer: ThreadedProducer<DeadLetterDeliveries>,
    topic: String,
    source_topic: String,
}

/// Follows the dead letters' deliveries.
#[derive(Default)]
pub struct DeadLetterDeliveries {
    /// Attempts that failed (each is retried).
    failed: AtomicU64,
    state: Mutex<Deliveries>,
    answered: Condvar,
}

#[derive(Default)]
struct Deliveries {
    /// The next dead letter's sequence number.
    next: usize,
    /// Queued and not yet on the broker, retries included.
    pending: BTreeSet<usize>,
    /// Failed, to be sent again.
    retry: Vec<(usize, OwnedMessage)>,
    /// When the retries were last sent.
    retried: Option<Instant>,
}

impl DeadLetterDeliveries {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Letter `seq` failed: keep it to send again.
    fn failed(&self, seq: usize, letter: OwnedMessage, error: &dyn std::fmt::Display) {
        // Rare and serious: say it each time.
        self.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            topic = letter.topic(),
            "a dead letter was not delivered ({error}); it is sent again while a checkpoint or the end of the run waits for it"
        );
        self.lock().retry.push((seq, letter));
        self.answered.notify_all();
    }
}

impl ClientContext for DeadLetterDeliveries {}

impl ProducerContext for DeadLetterDeliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => {
                self.lock().pending.remove(&seq);
                self.answered.notify_all();
            }
            Err((e, message)) => self.failed(seq, message.detach(), e),
        }
    }
}

/// The least time between two rounds of sending failed dead letters again.
const DEAD_LETTER_RETRY: Duration = Duration::from_millis(500);

/// Header names on dead letters.
pub mod headers {
    /// `malformed` or `late`.
    pub const KIND: &str = "tickfold.kind";
    /// Why, in words.
    pub const REASON: &str = "tickfold.reason";
    /// `topic/partition/offset` of the record it came from.
    pub const SOURCE: &str = "tickfold.source";
}

impl DeadLetters {
    /// A producer for `topic`, the dead letters of `source_topic`.
    pub fn new(
        brokers: &str,
        topic: &str,
        source_topic: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Self, KafkaSourceError> {
        // Security settings (sasl.*, ssl.*, security.protocol) apply to the
        // producer too; fetch settings do not.
        let mut config = client_config(brokers, options);
        // A letter librdkafka could not deliver within 30 s (its own retries
        // included) comes back to us and is sent again: a failure shows in
        // the log within half a minute instead of librdkafka's 5 minutes.
        // Not much less: a broker that answers produce requests slowly (tansu
        // on SQLite behind large fetches, seconds per request under load)
        // still takes the letters in time, where a timeout of 5 s had every
        // letter time out and be sent again in waves, each adding to the
        // broker's queue, for as long as the input lasted.
        config.set("linger.ms", "5").set("acks", "all").set("message.timeout.ms", "30000");
        let producer = config.create_with_context(DeadLetterDeliveries::default()).map_err(|source| {
            KafkaSourceError::Client { brokers: brokers.into(), what: "creating the dead-letter producer", source }
        })?;
        Ok(DeadLetters { producer, topic: topic.into(), source_topic: source_topic.into() })
    }

    /// Queues a dead letter. When librdkafka's queue is full it waits:
    /// dead letters are never dropped.
    pub fn send(&self, key: Option<&[u8]>, payload: &[u8], kind: &str, reason: &str, partition: i32, offset: i64) {
        let source = format!("{}/{partition}/{offset}", self.source_topic);
        let headers = OwnedHeaders::new()
            .insert(Header { key: headers::KIND, value: Some(kind) })
            .insert(Header { key: headers::REASON, value: Some(reason) })
            .insert(Header { key: headers::SOURCE, value: Some(source.as_str()) });
        let seq = {
            let mut state = self.producer.context().lock();
            let seq = state.next;
            state.next += 1;
            state.pending.insert(seq);
            seq
        };
        self.queue(seq, key, payload, headers);
    }

    /// Hands letter `seq` to librdkafka, waiting while its queue is full;
    /// keeps it to send again if librdkafka refuses it.
    fn queue(&self, seq: usize, key: Option<&[u8]>, payload: &[u8], headers: OwnedHeaders) {
        let mut record = BaseRecord::with_opaque_to(&self.topic, seq).payload(payload).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, r)) => {
                    let letter = OwnedMessage::new(
                        Some(payload.to_vec()),
                        key.map(<[u8]>::to_vec),
                        self.topic.clone(),
                        rdkafka::Timestamp::NotAvailable,
                        -1,
                        -1,
                        r.headers,
                    );
                    self.producer.context().failed(seq, letter, &e);
                    return;
                }
            }
        }
    }

    /// Sends the failed letters again, at most once per [`DEAD_LETTER_RETRY`].
    fn retry(&self) {
        let letters = {
            let mut state = self.producer.context().lock();
            if state.retry.is_empty() || state.retried.is_some_and(|t| t.elapsed() < DEAD_LETTER_RETRY) {
                return;
            }
            state.retried = Some(Instant::now());
            std::mem::take(&mut state.retry)
        };
        for (seq, letter) in letters {
            let headers = letter.headers().cloned().unwrap_or_else(OwnedHeaders::new);
            self.queue(seq, letter.key(), letter.payload().unwrap_or_default(), headers);
        }
    }

    /// How far [`settled`](Self::settled) must get for every dead letter
    /// queued so far.
    pub fn queued(&self) -> usize {
        self.producer.context().lock().next
    }

    /// Waits until every dead letter queued before `queued` (see
    /// [`queued`](Self::queued)) is on the broker, sending failed ones
    /// again meanwhile, or until `timeout` passes (false). Later ones do
    /// not hold it up, so a steady stream of dead letters cannot keep a
    /// checkpoint waiting.
    pub fn settled(&self, queued: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let deliveries = self.producer.context();
        loop {
            self.retry();
            let state = deliveries.lock();
            if state.pending.first().is_none_or(|&seq| seq >= queued) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Woken by an answer; at the latest when the retries are due.
            let wait = (deadline - now).min(DEAD_LETTER_RETRY);
            drop(deliveries.answered.wait_timeout(state, wait).unwrap_or_else(PoisonError::into_inner));
        }
    }

    /// Dead letters not yet on the broker (queued, in flight, or waiting
    /// to be sent again).
    pub fn unsent(&self) -> u64 {
        self.producer.context().lock().pending.len() as u64
    }

    /// Attempts to send a dead letter that failed (each was retried).
    pub fn failed_attempts(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }
}

/// A client config for `brokers` with the connection settings of
/// `options` (see [`is_connection_setting`]) and nothing else of them.
fn client_config(brokers: &str, options: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in options.iter().filter(|(k, _)| is_connection_setting(k)) {
        config.set(k, v);
    }
    config
}

/// librdkafka settings every client of the host takes, not only the
/// readers: reaching the brokers (security, sockets) and `debug`.
fn is_connection_setting(key: &str) -> bool {
    ["security.protocol", "sasl.", "ssl.", "client.id", "socket.", "broker.", "debug"]
        .iter()
        .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for partitions in 0..9 {
            for workers in 1..5 {
                let mut seen: Vec<i32> = (0..workers).flat_map(|w| owned_partitions(partitions, w, workers)).collect();
                seen.sort();
                assert_eq!(seen, (0..partitions as i32).collect::<Vec<_>>());
            }
        }
        assert_eq!(owned_partitions(4, 1, 2), vec![1, 3]);
    }

    #[test]
    fn connection_settings_reach_the_dead_letter_producer() {
        assert!(is_connection_setting("sasl.username"));
        assert!(is_connection_setting("security.protocol"));
        assert!(!is_connection_setting("fetch.max.bytes"));
    }
}
