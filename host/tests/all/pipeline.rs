//! The streaming host over a real broker (tansu): a seeded topic with
//! out-of-order, late and malformed records, read by 2 workers, through
//! ohlcv → rsi and vwap, checked against the references; every good trade
//! reaches the sinks exactly once, and every bad or late one is in the
//! dead-letter topic with its reason.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tickfold::dataflow::{self, Pipeline, RunCounters, RunOptions, SinkFactory};
use tickfold::decode::{Decoder, Shape};
use tickfold::exec::StageSpec;
use tickfold::sink::{Fanout, SinkError, SinkWriter};
use tickfold::source::Row;
use tickfold::source::kafka::{ReaderOptions, Start, headers};
use tickfold_reference::market;

use crate::conformance::{Out, assert_same, bars_as_out, close, ref_trades, vwap_outs};
use crate::support::{Tansu, Trade, plugin_wasm, runtime, trades};

pub const SYMBOLS: [&str; 6] = ["AAPL", "MSFT", "NVDA", "BTC-USD", "ETH-USD", "EURUSD"];
pub const PARTITIONS: i32 = 4;
pub const LATENESS_MS: i64 = 2_000;

/// What a record in the topic is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// A trade that is on time in its partition.
    Good(Trade),
    /// A trade below its partition's watermark on arrival.
    Late,
    /// Bytes that do not decode.
    Malformed,
}

/// One record, in its partition's order.
#[derive(Clone, Debug)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub kind: Kind,
}

/// A seeded topic: per partition, its records in order.
pub struct Scenario {
    pub partitions: Vec<Vec<Record>>,
}

pub fn flat(t: &Trade) -> Vec<u8> {
    format!(r#"{{"symbol":"{}","ts":{},"price":{:?},"size":{:?}}}"#, t.symbol, t.ts, t.price, t.size).into_bytes()
}

const MALFORMED: [&[u8]; 5] = [
    b"not json at all",
    br#"{"symbol":"AAPL","ts":"yesterday","price":1.5,"size":1}"#,
    br#"{"symbol":"AAPL","price":1.5,"size":1}"#,
    br#"[1,2,3]"#,
    br#"{"symbol":"MSFT","ts":1700000000000,"price":10,"size":-3}"#,
];

impl Scenario {
    /// `n` trades of [`SYMBOLS`] (a symbol always in partition
    /// `index % PARTITIONS`), some swapped out of order within the allowed
    /// lateness, plus late copies and malformed records mixed in.
    pub fn new(seed: u64, n: usize) -> Self {
        let data = trades(seed, &SYMBOLS, n, 1_700_000_000_000, 100.0);
        let mut partitions: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
        let mut max_ts = vec![i64::MIN; PARTITIONS as usize];
        let partition_of = |symbol: &str| SYMBOLS.iter().position(|s| *s == symbol).unwrap() % PARTITIONS as usize;
        for (i, t) in data.into_iter().enumerate() {
            let p = partition_of(&t.symbol);
            if i % 97 == 50 {
                let bad = MALFORMED[(i / 97) % MALFORMED.len()];
                partitions[i % PARTITIONS as usize].push(Record {
                    key: None,
                    payload: bad.to_vec(),
                    kind: Kind::Malformed,
                });
            }
            if i % 151 == 75 && max_ts[p] > i64::MIN {
                // A straggler from half a minute ago: far past the lateness.
                let late = Trade { symbol: t.symbol.clone(), ts: max_ts[p] - 30_000, price: t.price * 1.01, size: 7.0 };
                partitions[p].push(Record {
                    key: Some(late.symbol.to_string()),
                    payload: flat(&late),
                    kind: Kind::Late,
                });
            }
            // The generator's swaps are mostly within a second (on time),
            // but a swap across a silent gap of minutes makes a late one:
            // the rule the host applies decides.
            let on_time = t.ts >= max_ts[p].saturating_sub(LATENESS_MS);
            max_ts[p] = max_ts[p].max(t.ts);
            let kind = if on_time { Kind::Good(t.clone()) } else { Kind::Late };
            partitions[p].push(Record { key: Some(t.symbol.to_string()), payload: flat(&t), kind });
        }
        Scenario { partitions }
    }

    /// Produces every record into `topic`, each to its partition, in order.
    pub fn produce(&self, broker: &Tansu, topic: &str) {
        self.produce_in_batches_of(broker, topic, 10_000);
    }

    /// [`Scenario::produce`] with at most `batch` records per record batch.
    /// tansu's memory engine cannot serve a fetch that starts inside a
    /// record batch (it skips to the next batch, or sends nothing if there
    /// is none), so tests that resume at arbitrary offsets use batches of 1.
    pub fn produce_in_batches_of(&self, broker: &Tansu, topic: &str, batch: usize) {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("batch.num.messages", batch.to_string())
            // Room for every record of the larger scenarios at once.
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        for (p, records) in self.partitions.iter().enumerate() {
            for r in records {
                let mut record = BaseRecord::to(topic).partition(p as i32).payload(&r.payload);
                if let Some(k) = &r.key {
                    record = record.key(k.as_str());
                }
                producer.send(record).map_err(|(e, _)| e).unwrap();
            }
        }
        // Generous: on a loaded 2-core machine the broker may lag.
        producer.flush(Duration::from_secs(180)).unwrap();
    }

    /// On-time trades with their (partition, offset), in partition order.
    pub fn good(&self) -> Vec<(i32, i64, &Trade)> {
        let mut out = Vec::new();
        for (p, records) in self.partitions.iter().enumerate() {
            for (o, r) in records.iter().enumerate() {
                if let Kind::Good(t) = &r.kind {
                    out.push((p as i32, o as i64, t));
                }
            }
        }
        out
    }

    /// Records that belong in the dead-letter topic, by `(partition, offset)`.
    pub fn dead(&self) -> BTreeMap<(i32, i64), &Record> {
        let mut out = BTreeMap::new();
        for (p, records) in self.partitions.iter().enumerate() {
            for (o, r) in records.iter().enumerate() {
                if !matches!(r.kind, Kind::Good(_)) {
                    out.insert((p as i32, o as i64), r);
                }
            }
        }
        out
    }

    /// What ohlcv (1m) → rsi (14 on close) and vwap (session 00:00, 5m
    /// rolling) must write, from the references.
    pub fn expected(&self) -> Expected {
        // Per key, partition order is arrival order.
        let good: Vec<Trade> = self.good().into_iter().map(|(_, _, t)| t.clone()).collect();
        let reference = ref_trades(&good);
        let bars = market::ohlcv_bars(&reference, 60_000, 0, None);
        let mut rsi = Vec::new();
        for key in SYMBOLS {
            let mine: Vec<&market::Bar> = bars.bars.iter().filter(|b| b.key == key).collect();
            let closes: Vec<f64> = mine.iter().map(|b| b.close).collect();
            for (bar, v) in mine.iter().zip(tickfold_reference::ta::rsi(&closes, 14)) {
                if let Some(v) = v {
                    rsi.push(Out { series: "rsi_14".into(), key: key.into(), ts: bar.start, values: vec![v] });
                }
            }
        }
        let vwap = vwap_outs(&good, &reference, 0, 300_000);
        let bars = bars_as_out(&bars).into_iter().map(|o| Out { series: "bars_1m".into(), ..o }).collect();
        Expected { bars, rsi, vwap }
    }
}

/// The reference outputs, by series.
pub struct Expected {
    pub bars: Vec<Out>,
    pub rsi: Vec<Out>,
    pub vwap: Vec<Out>,
}

/// A broker with topic `trades` ([`PARTITIONS`] partitions) and its
/// dead-letter topic, holding the seeded scenario.
pub fn seeded_broker(seed: u64, trades: usize) -> (Tansu, Scenario) {
    seeded_broker_in_batches_of(seed, trades, 10_000)
}

/// [`seeded_broker`], at most `batch` records per record batch.
pub fn seeded_broker_in_batches_of(seed: u64, trades: usize, batch: usize) -> (Tansu, Scenario) {
    let broker = Tansu::start();
    broker.create_topic("trades", PARTITIONS as u32);
    broker.create_topic("trades.dead-letter", 1);
    let scenario = Scenario::new(seed, trades);
    let started = std::time::Instant::now();
    scenario.produce_in_batches_of(&broker, "trades", batch);
    eprintln!("produced {trades} trades in batches of {batch} in {:?}", started.elapsed());
    (broker, scenario)
}

/// Reads `expected` records from the dead-letter topic (one partition).
pub fn read_dead_letters(broker: &Tansu, topic: &str, expected: usize) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let consumer = broker.consumer("tickfold-test-dlq");
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let mut hs = BTreeMap::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    hs.insert(h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                }
            }
            out.push((m.payload().unwrap_or_default().to_vec(), hs));
        }
    }
    // Nothing more than expected arrives either.
    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        panic!("an unexpected dead letter: {:?}", String::from_utf8_lossy(m.payload().unwrap_or_default()));
    }
    out
}

/// Checks the dead letters against the scenario: every malformed record
/// as it came, every late trade as a flat record, each with its reason
/// and source.
pub fn check_dead_letters(scenario: &Scenario, topic: &str, letters: &[(Vec<u8>, BTreeMap<String, String>)]) {
    let dead = scenario.dead();
    assert_eq!(letters.len(), dead.len(), "one dead letter per malformed record or late trade");
    let mut seen = BTreeSet::new();
    for (payload, hs) in letters {
        let source = &hs[headers::SOURCE];
        let mut parts = source.rsplitn(3, '/');
        let offset: i64 = parts.next().unwrap().parse().unwrap();
        let partition: i32 = parts.next().unwrap().parse().unwrap();
        assert_eq!(parts.next(), Some(topic), "{source}");
        let record = dead.get(&(partition, offset)).unwrap_or_else(|| panic!("{source} was not meant to be dead"));
        assert_eq!(payload, &record.payload, "{source}: the payload as it came");
        let (kind, reason) = (&hs[headers::KIND], &hs[headers::REASON]);
        match record.kind {
            Kind::Malformed => assert_eq!(kind, "malformed"),
            Kind::Late => {
                assert_eq!(kind, "late");
                assert!(reason.contains("watermark"), "{reason}");
            }
            Kind::Good(_) => unreachable!(),
        }
        assert!(!reason.is_empty());
        assert!(seen.insert((partition, offset)), "{source} dead-lettered twice");
    }
}

/// A sink that keeps what it is given.
#[derive(Clone, Default)]
struct Collected {
    outputs: Arc<Mutex<Vec<Out>>>,
    inputs: Arc<Mutex<Vec<Row>>>,
}

impl SinkWriter for Collected {
    fn write(&mut self, series: &str, _: &[String], symbol: &str, ts: i64, values: &[f64]) -> Result<(), SinkError> {
        self.outputs.lock().unwrap().push(Out {
            series: series.into(),
            key: symbol.into(),
            ts,
            values: values.to_vec(),
        });
        Ok(())
    }

    fn write_input(&mut self, _: &str, _: &[String], row: &Row) -> Result<(), SinkError> {
        self.inputs.lock().unwrap().push(row.clone());
        Ok(())
    }

    fn advance(&mut self, _: i64) -> Result<(), SinkError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl Collected {
    /// Every worker's sinks: this one, shared.
    fn sinks(&self) -> SinkFactory {
        let c = self.clone();
        Arc::new(move |_| {
            let mut fanout = Fanout::default();
            fanout.add(Box::new(c.clone()), Vec::new());
            Ok(fanout)
        })
    }
}

/// `stages` over the trades (`price, size`), every stage's outputs reported.
fn trades_pipeline(stages: Vec<StageSpec>, keep_input: bool) -> Pipeline {
    Pipeline {
        stages,
        input_name: "trades".into(),
        input_fields: vec!["price".into(), "size".into()],
        keep_input,
        report_all: true,
        control: None,
        deploy_lead_ms: 0,
    }
}

/// Reading topic `trades` of `broker`: late trades dropped (not
/// dead-lettered), partitions idle after 5 s.
fn reader_options(broker: &Tansu) -> ReaderOptions {
    ReaderOptions {
        brokers: broker.bootstrap(),
        topic: "trades".into(),
        group: "tickfold-test".into(),
        allowed_lateness_ms: LATENESS_MS,
        idle_timeout: Duration::from_secs(5),
        max_batch: 500,
        dead_letter_late: false,
        options: Default::default(),
    }
}

/// A run of 2 workers over `reader_options`, from the start, flat records,
/// no dead-letter topic, until interrupted.
fn run_options(broker: &Tansu) -> RunOptions {
    RunOptions {
        workers: 2,
        reader: reader_options(broker),
        decoder: Decoder::new(Shape::Flat, None),
        start: Start::Earliest,
        dead_letter_topic: None,
        stop_when_idle: None,
        stop_after_records: None,
        checkpoint: None,
        max_in_flight: tickfold::dataflow::MAX_IN_FLIGHT,
    }
}

/// The standard test DAG: ohlcv (bars renamed `bars_1m`) → rsi (renamed
/// `rsi_14`), and vwap over the trades.
pub fn stages() -> Vec<StageSpec> {
    let rt = runtime();
    let stage = |name: &str, params: &[(&str, &str)], input: Option<&str>, rename: &[(&str, &str)]| StageSpec {
        name: name.to_string(),
        plugin: rt.load_file(&plugin_wasm(name)).unwrap(),
        params: tickfold::plugin::params(params.iter().copied()),
        input: input.map(|i| vec![i.to_string()]),
        rename: rename.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        stats: Default::default(),
    };
    vec![
        stage("ohlcv", &[("window", "1m")], Some("trades"), &[("bars", "bars_1m")]),
        stage("rsi", &[("period", "14")], Some("bars_1m"), &[("rsi", "rsi_14")]),
        stage("vwap", &[], Some("trades"), &[]),
    ]
}

#[test]
fn two_workers_over_four_partitions_match_the_references_and_dead_letter_the_rest() {
    let (broker, scenario) = seeded_broker(41, 6_000);

    let collected = Collected::default();
    let sinks = collected.sinks();
    let pipeline = trades_pipeline(stages(), true);
    let options = RunOptions {
        reader: ReaderOptions {
            // Longer than the test: no partition goes idle while others
            // still have data.
            idle_timeout: Duration::from_secs(600),
            dead_letter_late: true,
            ..reader_options(&broker)
        },
        dead_letter_topic: Some("trades.dead-letter".into()),
        stop_when_idle: Some(Duration::from_secs(1)),
        ..run_options(&broker)
    };
    let counters = Arc::new(RunCounters::default());
    // On a thread with a deadline: a hung run fails the test, not CI.
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(dataflow::run(&options, &pipeline, sinks, counters, Arc::new(AtomicBool::new(false))));
    });
    let stats = wait.recv_timeout(Duration::from_secs(300)).expect("the run ended within 5 minutes").unwrap();

    let good = scenario.good();
    let dead = scenario.dead();
    let malformed = dead.values().filter(|r| matches!(r.kind, Kind::Malformed)).count() as u64;
    assert_eq!(stats.partitions, PARTITIONS as usize);
    assert_eq!(stats.records, scenario.partitions.iter().map(Vec::len).sum::<usize>() as u64);
    assert_eq!(stats.trades, good.len() as u64);
    assert_eq!(stats.malformed, malformed);
    assert_eq!(stats.late, dead.len() as u64 - malformed);
    assert_eq!(stats.dead_lettered, dead.len() as u64);
    for (p, records) in scenario.partitions.iter().enumerate() {
        assert_eq!(stats.positions.get(&(p as i32)), Some(&(records.len() as i64)), "partition {p} read to its end");
    }

    // Every good trade reached the sinks exactly once, bit for bit.
    let mut inputs = collected.inputs.lock().unwrap().clone();
    inputs.sort_by_key(|r| (r.partition, r.offset));
    assert_eq!(inputs.len(), good.len());
    for (row, (p, o, t)) in inputs.iter().zip(&good) {
        assert_eq!((row.partition, row.offset), (*p, *o));
        assert_eq!((row.key.as_str(), row.ts), (t.symbol.as_str(), t.ts));
        assert_eq!(row.values.as_slice(), [t.price, t.size]);
    }

    let expected = scenario.expected();
    let outputs = collected.outputs.lock().unwrap().clone();
    let of = |series: &str| outputs.iter().filter(|o| o.series == series).cloned().collect::<Vec<_>>();
    assert_same("bars_1m", of("bars_1m"), expected.bars);
    assert_same("rsi_14", of("rsi_14"), expected.rsi);
    // One VWAP per trade, per key in arrival order.
    let (got, want) = (of("vwap"), expected.vwap);
    assert_eq!(got.len(), want.len());
    for key in SYMBOLS {
        let g: Vec<&Out> = got.iter().filter(|o| o.key == key).collect();
        let w: Vec<&Out> = want.iter().filter(|o| o.key == key).collect();
        assert_eq!(g.len(), w.len(), "{key}");
        for (g, w) in g.iter().zip(&w) {
            assert!(g.ts == w.ts && g.values.iter().zip(&w.values).all(|(a, b)| close(*a, *b)), "{g:?} != {w:?}");
        }
    }

    let letters = read_dead_letters(&broker, "trades.dead-letter", dead.len());
    check_dead_letters(&scenario, "trades", &letters);
}

/// A worker whose partitions have no trades at all follows the other
/// workers' watermark once they are idle, instead of holding the frontier
/// (and every window) back until the end.
#[test]
fn a_worker_with_only_idle_partitions_does_not_hold_the_frontier() {
    let broker = Tansu::start();
    broker.create_topic("trades", PARTITIONS as u32);
    // Trades in partitions 0 and 2 only (worker 0's, with 2 workers);
    // worker 1's partitions 1 and 3 stay empty.
    let data = trades(8, &["AAPL", "NVDA"], 2_000, 1_700_000_000_000, 50.0);
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    for t in &data {
        let partition = if t.symbol == "AAPL" { 0 } else { 2 };
        let payload = flat(t);
        let record = BaseRecord::to("trades").partition(partition).key(t.symbol.as_str()).payload(&payload);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let collected = Collected::default();
    let sinks = collected.sinks();
    let pipeline = trades_pipeline(stages()[..1].to_vec(), false);
    let options = RunOptions {
        reader: ReaderOptions { idle_timeout: Duration::from_millis(300), ..reader_options(&broker) },
        ..run_options(&broker)
    };
    let counters = Arc::new(RunCounters::default());
    let interrupted = Arc::new(AtomicBool::new(false));
    let (done, wait) = std::sync::mpsc::channel();
    {
        let (counters, interrupted) = (counters.clone(), interrupted.clone());
        std::thread::spawn(move || {
            let _ = done.send(dataflow::run(&options, &pipeline, sinks, counters, interrupted));
        });
    }
    // The frontier (the lowest worker watermark) must reach the active
    // partitions' watermark (the lower of the two) while the host runs,
    // not only when it stops. Without following, worker 1 would hold it
    // at the start.
    let newest_of = |symbol: &str| data.iter().filter(|t| t.symbol == symbol).map(|t| t.ts).max().unwrap();
    let expected = newest_of("AAPL").min(newest_of("NVDA")) - LATENESS_MS;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = i64::MIN;
    while Instant::now() < deadline && seen < expected {
        seen = counters.watermark.load(std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }
    interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
    let stats = wait.recv_timeout(Duration::from_secs(60)).expect("the run stopped").unwrap();
    assert_eq!((stats.trades, stats.records), (data.len() as u64, data.len() as u64), "{stats:?}");
    assert_eq!(seen, expected, "the frontier reached the active partitions' watermark while running");
    // And the windows it passed were closed then: bars are out, though
    // the run was interrupted (which closes nothing).
    let bars = collected.outputs.lock().unwrap().iter().filter(|o| o.series == "bars_1m").count();
    assert!(bars > 0, "bars closed while the host ran");
}
