//! Checkpoints: the host's whole state at one consistent cut, so that a
//! host killed at any moment restarts from the last one and writes exactly
//! what a run that never stopped would have written.
//!
//! A checkpoint holds every partition's next offset and newest event time,
//! every plugin instance's `snapshot()` (by key name, so it does not
//! depend on which worker held a key), each worker's watermark, and what
//! the sinks need to resume. It is one file, written under a temporary
//! name, fsynced and renamed, with a checksum over its contents: a file cut
//! short or damaged is detected on load, said so in the log, and the
//! previous checkpoint is used.
//!
//! Storage goes through [`CheckpointStore`]: a local directory here, and
//! an object store needs only the same four calls (put whole objects, get,
//! list, delete).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `[checkpoint]` table: checkpoints are taken only when it is present.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Where checkpoints are kept (relative to the config file).
    pub dir: PathBuf,
    /// Time between checkpoints, ms of processing (wall clock).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// How many complete checkpoints to keep.
    #[serde(default = "default_retain")]
    pub retain: usize,
}

fn default_interval() -> u64 {
    10_000
}

fn default_retain() -> usize {
    3
}

/// What went wrong saving or loading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint store {at}: {source}")]
    Io { at: String, source: std::io::Error },
    #[error("checkpoint {name} is unreadable: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("encoding checkpoint {id}: {reason}")]
    Encode { id: u64, reason: String },
}

/// One partition's position at the cut.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// The offset of the next record to read.
    pub next_offset: i64,
    /// The newest event time accepted (its watermark is this minus the
    /// allowed lateness).
    pub max_ts: i64,
}

/// One key's state in one stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStateCheckpoint {
    pub key: String,
    pub state: Vec<u8>,
}

/// One stage of the DAG: every worker's instance's snapshot, merged by key
/// (keys are disjoint between workers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCheckpoint {
    /// The stage's name in the DAG.
    pub name: String,
    /// `name@version` of the plugin that wrote the state.
    pub plugin: String,
    pub format_version: u32,
    /// Per worker, the state that belongs to no key.
    pub shared: Vec<Vec<u8>>,
    pub keys: Vec<KeyStateCheckpoint>,
}

/// The whole state at one cut. (`Sinks` is the sinks' cut: generic only
/// so that format 1, whose archive cut has no generation, reads into it.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint<Sinks = crate::sink::SinkCut> {
    /// Increasing from 1.
    pub id: u64,
    /// Wall-clock time it was taken, ms since the Unix epoch.
    pub taken_at_ms: i64,
    pub topic: String,
    /// Workers of the run that took it.
    pub workers: usize,
    pub partitions: BTreeMap<i32, PartitionCheckpoint>,
    /// Per worker, the watermark its plugin chain had reached.
    pub watermarks: Vec<i64>,
    pub stages: Vec<StageCheckpoint>,
    /// Per worker, what its sinks need to take up from the cut (the
    /// archive's open buckets).
    pub sinks: Vec<Sinks>,
}

/// Where checkpoints are kept: whole objects, written atomically.
pub trait CheckpointStore: Send + Sync {
    /// Stores `bytes` under `name`, replacing it, all or nothing.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError>;
    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError>;
    /// Every stored name.
    fn list(&self) -> Result<Vec<String>, CheckpointError>;
    fn delete(&self, name: &str) -> Result<(), CheckpointError>;
    /// For messages.
    fn describe(&self) -> String;
}

/// Checkpoints as files in a local directory.
pub struct LocalDir {
    dir: PathBuf,
}

impl LocalDir {
    pub fn new(dir: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io { at: dir.display().to_string(), source })?;
        Ok(LocalDir { dir: dir.to_path_buf() })
    }

    fn io(&self, name: &str) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
        let at = self.dir.join(name).display().to_string();
        move |source| CheckpointError::Io { at: at.clone(), source }
    }
}

impl CheckpointStore for LocalDir {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let io = self.io(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(name)));
        if let Err(e) = written {
            // A full disk, say: leave no partial file behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        // The rename itself must survive a crash: sync the directory.
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(&io)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        std::fs::read(self.dir.join(name)).map_err(self.io(name))
    }

    fn list(&self) -> Result<Vec<String>, CheckpointError> {
        let io = self.io("");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(&io)? {
            let name = entry.map_err(&io)?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<(), CheckpointError> {
        std::fs::remove_file(self.dir.join(name)).map_err(self.io(name))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

const MAGIC: &[u8; 4] = b"TFCK";
/// 2: the archive's cut carries the writer's generation. Format 1 is still
/// read ([`v1`]).
const FORMAT: u32 = 2;
/// Magic, format, payload length, CRC-32 of the payload.
const HEADER: usize = 4 + 4 + 8 + 4;

fn name_of(id: u64) -> String {
    format!("checkpoint-{id:020}.tfck")
}

fn id_of(name: &str) -> Option<u64> {
    name.strip_prefix("checkpoint-")?.strip_suffix(".tfck")?.parse().ok()
}

/// The bytes of a checkpoint file.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    let payload = postcard::to_stdvec(checkpoint)
        .map_err(|e| CheckpointError::Encode { id: checkpoint.id, reason: e.to_string() })?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Reads a checkpoint file's bytes, checking every part of the header.
pub fn decode(name: &str, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt { name: name.into(), reason };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(corrupt(format!("not a checkpoint file ({} bytes, no header)", bytes.len())));
    }
    let format = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if format != FORMAT && format != 1 {
        return Err(corrupt(format!("format {format}, this host reads formats 1 to {FORMAT}")));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(corrupt(format!("cut short: {} of {len} bytes", payload.len())));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch: the file was damaged".into()));
    }
    let decoded = if format == 1 {
        postcard::from_bytes::<v1::Checkpoint>(payload).map(Checkpoint::from)
    } else {
        postcard::from_bytes(payload)
    };
    decoded.map_err(|e| corrupt(format!("cannot decode: {e}")))
}

/// Format 1, written before the archive's cut carried the writer's
/// generation. Its cuts read as generation 0: that host named no late part
/// with a generation, so a restore keeps every late part it wrote, as it
/// did.
mod v1 {
    use crate::sink::archive::{ArchiveCut, OpenBucket};
    use serde::{Deserialize, Serialize};

    /// A format-1 checkpoint: the same fields, its sinks' cut without the
    /// generation.
    pub type Checkpoint = super::Checkpoint<SinkCut>;

    #[derive(Serialize, Deserialize)]
    pub struct SinkCut {
        pub archive: Option<Cut>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct Cut {
        pub roll_interval_ms: u64,
        pub watermark: i64,
        pub open: Vec<OpenBucket>,
    }

    impl From<Checkpoint> for super::Checkpoint {
        fn from(c: Checkpoint) -> Self {
            let super::Checkpoint { id, taken_at_ms, topic, workers, partitions, watermarks, stages, sinks } = c;
            let sinks = sinks
                .into_iter()
                .map(|s| crate::sink::SinkCut {
                    archive: s.archive.map(|a| ArchiveCut {
                        roll_interval_ms: a.roll_interval_ms,
                        watermark: a.watermark,
                        open: a.open,
                        generation: 0,
                    }),
                })
                .collect();
            super::Checkpoint { id, taken_at_ms, topic, workers, partitions, watermarks, stages, sinks }
        }
    }
}

/// Saves `checkpoint` and deletes all but the newest `retain`. Returns the
/// file's size.
pub fn save(store: &dyn CheckpointStore, checkpoint: &Checkpoint, retain: usize) -> Result<usize, CheckpointError> {
    let bytes = encode(checkpoint)?;
    store.put(&name_of(checkpoint.id), &bytes)?;
    let mut ids: Vec<u64> = store.list()?.iter().filter_map(|n| id_of(n)).collect();
    ids.sort_unstable();
    let keep = retain.max(1);
    if ids.len() > keep {
        for id in &ids[..ids.len() - keep] {
            if let Err(e) = store.delete(&name_of(*id)) {
                tracing::warn!("removing an old checkpoint: {e}");
            }
        }
    }
    Ok(bytes.len())
}

/// The newest checkpoint that reads back whole; a damaged one is logged
/// and the one before it is tried. `None` when there is none.
pub fn load_latest(store: &dyn CheckpointStore) -> Result<Option<Checkpoint>, CheckpointError> {
    let mut ids: Vec<u64> = store.list()?.iter().filter_map(|n| id_of(n)).collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    for id in ids {
        let name = name_of(id);
        match store.get(&name).and_then(|bytes| decode(&name, &bytes)) {
            Ok(checkpoint) => return Ok(Some(checkpoint)),
            Err(e) => tracing::error!(
                store = %store.describe(),
                "{e}; falling back to the checkpoint before it (delete the file to silence this)"
            ),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64) -> Checkpoint {
        Checkpoint {
            id,
            taken_at_ms: 1_700_000_000_000 + id as i64,
            topic: "trades".into(),
            workers: 2,
            partitions: [(0, PartitionCheckpoint { next_offset: 10 * id as i64, max_ts: 5 })].into(),
            watermarks: vec![1, 2],
            stages: vec![StageCheckpoint {
                name: "vwap".into(),
                plugin: "vwap@0.1.0".into(),
                format_version: 1,
                shared: vec![vec![], vec![7]],
                keys: vec![KeyStateCheckpoint { key: "AAPL".into(), state: vec![1, 2, 3] }],
            }],
            sinks: vec![
                crate::sink::SinkCut {
                    archive: Some(crate::sink::archive::ArchiveCut {
                        roll_interval_ms: 60_000,
                        watermark: 3,
                        open: vec![crate::sink::archive::OpenBucket {
                            series: "vwap".into(),
                            start_ms: 0,
                            next_seq: 2,
                        }],
                        generation: 4,
                    }),
                },
                crate::sink::SinkCut::default(),
            ],
        }
    }

    fn temp_store(tag: &str) -> (PathBuf, LocalDir) {
        let dir = std::env::temp_dir().join(format!("tickfold-ckpt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalDir::new(&dir).unwrap();
        (dir, store)
    }

    #[test]
    fn a_checkpoint_reads_back_as_written_and_only_the_newest_are_kept() {
        let (dir, store) = temp_store("roundtrip");
        for id in 1..=5 {
            save(&store, &sample(id), 3).unwrap();
        }
        let mut names = store.list().unwrap();
        names.sort();
        assert_eq!(names, [name_of(3), name_of(4), name_of(5)]);
        assert_eq!(load_latest(&store).unwrap(), Some(sample(5)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_format_1_checkpoint_reads_with_generation_0() {
        // Written as a host before the generation wrote it: the same fields,
        // the archive's cut without one.
        let current = sample(7);
        let old = v1::Checkpoint {
            id: current.id,
            taken_at_ms: current.taken_at_ms,
            topic: current.topic.clone(),
            workers: current.workers,
            partitions: current.partitions.clone(),
            watermarks: current.watermarks.clone(),
            stages: current.stages.clone(),
            sinks: current
                .sinks
                .iter()
                .map(|s| v1::SinkCut {
                    archive: s.archive.as_ref().map(|a| v1::Cut {
                        roll_interval_ms: a.roll_interval_ms,
                        watermark: a.watermark,
                        open: a.open.clone(),
                    }),
                })
                .collect(),
        };
        let payload = postcard::to_stdvec(&old).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let mut expected = current;
        expected.sinks[0].archive.as_mut().unwrap().generation = 0;
        assert_eq!(decode("old", &bytes).unwrap(), expected);
        // Read as format 2 the same bytes do not decode to it.
        bytes[4..8].copy_from_slice(&FORMAT.to_le_bytes());
        assert!(decode("old", &bytes).is_err_and(|e| e.to_string().contains("cannot decode")));
        bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert!(decode("old", &bytes).unwrap_err().to_string().contains("this host reads formats 1 to 2"));
    }

    #[test]
    fn a_damaged_or_cut_short_checkpoint_is_detected_and_the_previous_one_used() {
        let (dir, store) = temp_store("corrupt");
        for id in 1..=3 {
            save(&store, &sample(id), 5).unwrap();
        }
        // One bit flipped in the newest, the one before cut short.
        let newest = dir.join(name_of(3));
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&newest, &bytes).unwrap();
        let err = decode("x", &bytes).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        let middle = dir.join(name_of(2));
        let bytes = std::fs::read(&middle).unwrap();
        std::fs::write(&middle, &bytes[..bytes.len() / 2]).unwrap();
        assert!(decode("x", &bytes[..bytes.len() / 2]).unwrap_err().to_string().contains("cut short"));
        assert_eq!(load_latest(&store).unwrap(), Some(sample(1)));
        // A temporary file left by a crash mid-write is not a checkpoint.
        std::fs::write(dir.join(format!(".{}.tmp", name_of(9))), b"TFCK").unwrap();
        assert_eq!(load_latest(&store).unwrap(), Some(sample(1)));
        assert!(decode("x", b"junk").unwrap_err().to_string().contains("no header"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_empty_store_has_no_checkpoint() {
        let (dir, store) = temp_store("empty");
        assert_eq!(load_latest(&store).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
