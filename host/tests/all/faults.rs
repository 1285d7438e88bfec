//! The faults a long-running host meets besides a crash, met one after the
//! other by one `tickfold run`: the archive's disk full, the broker killed
//! and restarted with its storage, InfluxDB down for a while, then a
//! SIGTERM and a restart. InfluxDB and the archive end exactly as those of
//! an undisturbed run.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::pipeline::Scenario;
use crate::recovery::{Extra, assert_same_outputs, config, start};
use crate::support::{Influxd, SmallDisk, Tansu, TempDir, wait_success};

/// Waits until the log has more than `before` lines containing `needle`,
/// while the host runs; returns the count.
fn wait_for_log(child: &mut Child, log: &Path, needle: &str, before: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let count = text.lines().filter(|l| l.contains(needle)).count();
        if count > before {
            return count;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the host ended ({status}) while the test waited for \"{needle}\" in its log:\n{text}");
        }
        assert!(Instant::now() < deadline, "no \"{needle}\" in the log within {within:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_in_log(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains(needle)).count()
}

fn assert_running(child: &mut Child, log: &Path, what: &str) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "the host ended ({status}) {what}; make the input larger:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

#[test]
fn a_full_disk_a_broker_crash_an_influxdb_outage_and_a_sigterm_lose_nothing() {
    // A durable broker (tansu on SQLite), so that it can crash and come
    // back with the topic. Its SQLite engine, unlike the memory one,
    // serves fetches that start inside a record batch.
    let broker_dir = TempDir::new("faults-broker");
    let mut broker = Tansu::start_durable(broker_dir.path());
    broker.create_topic("trades", crate::pipeline::PARTITIONS as u32);
    broker.create_topic("trades.dead-letter", 1);
    let scenario = Scenario::new(2029, 100_000);
    let started = Instant::now();
    scenario.produce_in_batches_of(&broker, "trades", 500);
    eprintln!("produced in {:?}", started.elapsed());
    let mut influx = Influxd::start();
    influx.create_database("clean");
    influx.create_database("faulty");
    // Small buffers, so that an outage holds the host back soon, reading
    // included; short backoffs, so that it catches up soon after.
    // Fetches of 1 MiB: tansu's SQLite engine answers one request at a
    // time and fills a fetch up to its `fetch.max.bytes` (at most 5 MiB),
    // at ~2 MB/s on an idle machine; with the host's 64 MiB the records came
    // in bursts of a whole partition, seconds apart (tens of seconds on a
    // loaded machine), with every other request (commits, dead letters)
    // queued behind.
    let extra = Extra {
        kafka: "max_in_flight = 2000\n[kafka.options]\n\"fetch.max.bytes\" = \"1048576\"",
        influx: "batch_points = 500\nbuffer_points = 2000\ninitial_backoff_ms = 50\nmax_backoff_ms = 200",
    };

    let clean = TempDir::new("faults-clean");
    let log = clean.path().join("tickfold.log");
    let started = Instant::now();
    wait_success(
        &mut start(&config(clean.path(), &broker, &influx, "clean", extra), &log),
        &log,
        Duration::from_secs(180),
    );
    eprintln!("undisturbed run: {:?}", started.elapsed());

    let faulty = TempDir::new("faults-faulty");
    let config_faulty = config(faulty.path(), &broker, &influx, "faulty", extra);
    let log = faulty.path().join("tickfold.log");

    // 1. The archive's disk full from the start: a 64 MiB tmpfs with all
    // but 64 KiB taken by a filler file.
    let disk = SmallDisk::mount(&faulty.path().join("archive"), 64 << 20);
    let filler = disk.dir.join("filler");
    std::fs::write(&filler, vec![0u8; (disk.free() - (64 << 10)) as usize]).unwrap();
    let mut child = start(&config_faulty, &log);
    wait_for_log(&mut child, &log, "No space left on device", 0, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    assert_running(&mut child, &log, "while the archive's disk was full");
    let leftovers: Vec<_> =
        files_under(&disk.dir).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "a failed write leaves no temp file: {leftovers:?}");
    for part in files_under(&disk.dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
        tickfold::sink::archive::read_part(&part).unwrap_or_else(|e| panic!("a whole file or none: {e}"));
    }
    std::fs::remove_file(&filler).unwrap();
    wait_for_log(&mut child, &log, "archive: writing again", 0, Duration::from_secs(30));

    // 2. InfluxDB down for a few seconds: the host retries, holds back
    // (reading too, past `max_in_flight`), and catches up once it is back.
    influx.stop();
    wait_for_log(&mut child, &log, "Retrying a batch", 0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert_running(&mut child, &log, "while InfluxDB was down");
    influx.start_again();
    wait_for_log(&mut child, &log, "InfluxDB writes go through again", 0, Duration::from_secs(60));

    // 3. The broker crashes (SIGKILL) while the host reads, and comes back
    // a second later with its storage.
    // Generous waits for the next checkpoint: the test is about losing
    // nothing, not speed, and the whole suite shares two cores.
    let written = count_in_log(&log, " written to ");
    wait_for_log(&mut child, &log, " written to ", written, Duration::from_secs(120));
    broker.restart(Duration::from_secs(1));
    assert_running(&mut child, &log, "across the broker's restart");
    let written = count_in_log(&log, " written to ");
    wait_for_log(&mut child, &log, " written to ", written, Duration::from_secs(120));

    // 4. SIGTERM: the host stops reading, takes a last checkpoint there and
    // exits cleanly; the restart resumes from that checkpoint.
    assert_running(&mut child, &log, "before the SIGTERM");
    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    wait_success(&mut child, &log, Duration::from_secs(60));
    let text = std::fs::read_to_string(&log).unwrap();
    let stop_line = text
        .lines()
        .find(|l| l.contains("taken on stopping"))
        .unwrap_or_else(|| panic!("a checkpoint is taken on SIGTERM:\n{text}"));
    let id: u64 = stop_line.split("checkpoint ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(text.contains(&format!("checkpoint {id} holds where it stopped")), "the stop says so:\n{text}");
    let before = std::fs::read_to_string(&log).unwrap().len();
    wait_success(&mut start(&config_faulty, &log), &log, Duration::from_secs(180));
    let text = std::fs::read_to_string(&log).unwrap()[before..].to_string();
    assert!(
        text.contains(&format!("restoring from checkpoint {id} ")),
        "the restart resumes from the checkpoint taken on SIGTERM ({id}):\n{text}"
    );
    // The faults all came before the end of the input: the last run still
    // had records to read.
    let records: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tickfold: ")?.split(" records from").next()?.parse().ok())
        .unwrap_or_else(|| panic!("the run's summary:\n{text}"));
    assert!(records > 0, "the SIGTERM came before the end of the input:\n{text}");

    let text = std::fs::read_to_string(&log).unwrap();
    let milestones = ["No space left", "writing again", "go through again", "taken on stopping", "restoring from"];
    for line in text.lines().filter(|l| milestones.iter().any(|m| l.contains(m))) {
        eprintln!("{}", line.chars().take(240).collect::<String>());
    }

    assert_same_outputs(&influx, &clean.path().join("archive"), &disk.dir, scenario.good().len());
    drop(disk);
}
