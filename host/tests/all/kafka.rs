//! Against a real Kafka-protocol broker (tansu): `tickfold produce` puts
//! the seeded market into a topic, keyed so that a symbol stays in one
//! partition, and every trade can be read back exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tickfold::decode::{Decoder, Shape};
use tickfold::synthetic::Market;

use crate::support::Tansu;

const SYMBOLS: [&str; 8] = ["AAPL", "MSFT", "NVDA", "AMZN", "BTC-USD", "ETH-USD", "EURUSD", "SPY"];

#[test]
fn produce_puts_every_trade_in_its_symbols_partition() {
    let broker = Tansu::start();
    broker.create_topic("trades", 4);
    let n = 20_000;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickfold"))
        .args(["produce", "--brokers", &broker.bootstrap(), "--topic", "trades", "--as-fast-as-possible"])
        .args([
            "--trades",
            &n.to_string(),
            "--seed",
            "9",
            "--start-ms",
            "1700000000000",
            "--symbols",
            &SYMBOLS.join(","),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "produce failed: {}", String::from_utf8_lossy(&out.stderr));

    // Read all four partitions from the start. Counting, not the high
    // watermark, decides when everything is in: tansu's memory engine can
    // report a high watermark below the log end.
    let consumer = broker.consumer("tickfold-test");
    let mut assignment = TopicPartitionList::new();
    for p in 0..4 {
        assignment.add_partition_offset("trades", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let decoder = Decoder::new(Shape::Flat, None);
    let mut by_partition: BTreeMap<i32, Vec<tickfold::decode::Trade>> = BTreeMap::new();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < n && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let mut trades = Vec::new();
            decoder.decode(message.payload().unwrap(), &mut trades).unwrap();
            assert_eq!(message.key(), Some(trades[0].symbol.as_bytes()), "keyed by symbol");
            by_partition.entry(message.partition()).or_default().extend(trades);
            read += 1;
        }
    }
    assert_eq!(read, n, "read back {read} of {n} trades");

    // Each symbol in exactly one partition, in the order it was produced.
    let expected = Market::new(9, &SYMBOLS, 1_700_000_000_000, 1000.0).take(n);
    let mut expected_by_symbol: BTreeMap<&str, Vec<(i64, f64, f64)>> = BTreeMap::new();
    for t in expected {
        expected_by_symbol.entry(SYMBOLS[t.symbol]).or_default().push((t.ts, t.price, t.size));
    }
    let mut seen = BTreeSet::new();
    for trades in by_partition.values() {
        let symbols: BTreeSet<&str> = trades.iter().map(|t| t.symbol.as_str()).collect();
        for s in symbols {
            assert!(seen.insert(s.to_string()), "{s} is in more than one partition");
            let got: Vec<(i64, f64, f64)> =
                trades.iter().filter(|t| t.symbol == s).map(|t| (t.ts, t.price, t.size)).collect();
            assert_eq!(got, expected_by_symbol[s], "{s}: every trade, bit for bit, in order");
        }
    }
    assert_eq!(seen.len(), SYMBOLS.len());
    assert!(by_partition.len() > 1, "the symbols spread over the partitions");
}

#[test]
fn produce_replays_a_file_of_trades_in_order() {
    let broker = Tansu::start();
    broker.create_topic("replayed", 3);
    let dir = crate::support::TempDir::new("produce-file");
    let data = crate::support::trades(12, &["AAPL", "MSFT", "EURUSD", "ETH-USD"], 3_000, 1_700_000_000_000, 80.0);
    let file = dir.path().join("trades.csv");
    crate::support::write_trades_csv(&file, &data);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickfold"))
        .args(["produce", "--brokers", &broker.bootstrap(), "--topic", "replayed", "--as-fast-as-possible"])
        .arg("--input")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "produce failed: {}", String::from_utf8_lossy(&out.stderr));

    let consumer = broker.consumer("t");
    let mut assignment = TopicPartitionList::new();
    for p in 0..3 {
        assignment.add_partition_offset("replayed", p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let decoder = Decoder::new(Shape::Flat, None);
    let mut got: BTreeMap<String, Vec<tickfold::decode::Trade>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut read = 0;
    while read < data.len() && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let mut trades = Vec::new();
            decoder.decode(message.unwrap().payload().unwrap(), &mut trades).unwrap();
            for t in trades {
                got.entry(t.symbol.to_string()).or_default().push(t);
            }
            read += 1;
        }
    }
    assert_eq!(read, data.len());
    // Per symbol, the file's trades in the file's order, bit for bit
    // (out-of-order rows stay where the file has them).
    for (symbol, trades) in &got {
        let want: Vec<&tickfold::decode::Trade> = data.iter().filter(|t| t.symbol == symbol).collect();
        assert_eq!(trades.iter().collect::<Vec<_>>(), want, "{symbol}");
    }
}

/// The checkpoints' commits to the consumer group: sent without waiting,
/// at most one with the broker, the newest positions winning.
#[test]
fn group_commits_land_and_the_newest_positions_win() {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use tickfold::source::kafka::{GroupCommitter, ReaderOptions};

    let broker = Tansu::start();
    broker.create_topic("trades", 2);
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().unwrap();
    for i in 0..40 {
        producer.send(BaseRecord::<(), _>::to("trades").partition(i % 2).payload("x")).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let options = ReaderOptions {
        brokers: broker.bootstrap(),
        topic: "trades".into(),
        group: "checkpoints".into(),
        allowed_lateness_ms: 0,
        idle_timeout: Duration::from_secs(1),
        max_batch: 1,
        dead_letter_late: false,
        options: BTreeMap::new(),
    };
    let committer = GroupCommitter::new(&options).unwrap();
    // Several in a row, as checkpoints come faster than a slow broker
    // answers: whatever is skipped, the last one is what the group holds.
    for n in 1..=5 {
        committer.commit(&BTreeMap::from([(0, 3 * n), (1, 2 * n)]));
    }
    assert!(committer.wait(Duration::from_secs(60)), "the commits were answered");
    drop(committer);

    let reader = broker.consumer("checkpoints");
    let mut asked = TopicPartitionList::new();
    asked.add_partition("trades", 0);
    asked.add_partition("trades", 1);
    let committed = reader.committed_offsets(asked, Duration::from_secs(30)).unwrap();
    let offsets: Vec<_> = committed.elements().iter().map(|e| (e.partition(), e.offset())).collect();
    assert_eq!(offsets, vec![(0, Offset::Offset(15)), (1, Offset::Offset(10))]);
}

#[test]
fn a_checkpoint_can_wait_for_exactly_the_dead_letters_queued_before_it() {
    use tickfold::source::kafka::{DeadLetters, headers};
    let none = BTreeMap::new();
    // Nothing listens on this port: queued letters stay unanswered, and
    // waiting for them times out instead of saying they are sent.
    let nowhere = format!("127.0.0.1:{}", crate::support::free_port());
    let stuck = DeadLetters::new(&nowhere, "trades.dead-letter", "trades", &none).unwrap();
    assert!(stuck.settled(stuck.queued(), Duration::from_millis(10)), "nothing queued, nothing to wait for");
    stuck.send(None, b"{bad", "malformed", "not JSON", 0, 1);
    let started = Instant::now();
    assert!(
        !stuck.settled(stuck.queued(), Duration::from_millis(300)),
        "a letter the broker never took is not settled"
    );
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(stuck.unsent(), 1);

    // A real broker, and a dead-letter topic that does not exist yet: the
    // letters are refused, kept and sent again until the topic is there.
    let broker = Tansu::start();
    let letters = DeadLetters::new(&broker.bootstrap(), "late.dead-letter", "trades", &none).unwrap();
    for offset in 0..50 {
        letters.send(None, format!("bad {offset}").as_bytes(), "malformed", "not JSON", 3, offset);
    }
    let first = letters.queued();
    assert!(!letters.settled(first, Duration::from_secs(1)), "no topic, not on the broker");
    // librdkafka gives them back after its 30 s; they are kept and resent.
    let deadline = Instant::now() + Duration::from_secs(90);
    while letters.failed_attempts() == 0 {
        assert!(!letters.settled(first, Duration::from_millis(500)));
        assert!(Instant::now() < deadline, "the letters never came back as failed");
    }
    assert_eq!(letters.unsent(), 50, "failed letters are kept, not dropped");
    broker.create_topic("late.dead-letter", 1);
    // One more after the target: not waited for, but sent all the same.
    letters.send(None, b"bad 50", "malformed", "not JSON", 3, 50);
    assert!(letters.settled(first, Duration::from_secs(60)), "the broker took them once the topic was there");
    assert!(letters.settled(letters.queued(), Duration::from_secs(20)));
    assert_eq!(letters.unsent(), 0);
    let got = crate::pipeline::read_dead_letters(&broker, "late.dead-letter", 51);
    let sources: BTreeSet<String> = got.iter().map(|(_, h)| h[headers::SOURCE].clone()).collect();
    assert_eq!(sources, (0..51).map(|o| format!("trades/3/{o}")).collect(), "each once, none lost");
}
