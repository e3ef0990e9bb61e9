//! Recording real traffic as a trace (`[server] trace_file`): every task that ran is appended
//! as one line in the simulator's format, `{"at": 12.5, "pool": "coder", "duration": 0.8}`,
//! so `warmpool simulate --trace` can replay what the daemon saw.
//!
//! Lines are written by a thread of their own, so a slow disk never holds a task or the
//! runtime up; when the writer falls behind by more than [`BACKLOG`] lines, lines are dropped
//! (and counted in a warning) rather than memory growing. `at` is seconds since the file was
//! started (the daemon's start, or the last rotation); the file's start time is in the log.
//! A line is written when its task ends, so lines are in order of ending; the simulator puts
//! them back in order of arrival. When the file would pass `max_size`, it is renamed to
//! `FILE.1` (replacing the previous one) and a new file starts.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Lines that may wait for the writer thread.
pub const BACKLOG: usize = 65_536;

struct Line {
    arrived: Instant,
    pool: String,
    duration: Duration,
}

/// Appends tasks to a trace file from a thread of its own. Cheap to call from any task.
pub struct TraceRecorder {
    tx: SyncSender<Line>,
    dropped: AtomicU64,
}

impl TraceRecorder {
    /// Opens (appending to) `path` and starts the writer thread. A file that exists is
    /// rotated first, so that each file's `at` counts from its own start.
    ///
    /// Errors: the file cannot be created or the old one cannot be renamed.
    pub fn open(path: &Path, max_size: u64) -> std::io::Result<TraceRecorder> {
        let mut writer = Writer::open(path.to_path_buf(), max_size)?;
        let (tx, rx) = sync_channel::<Line>(BACKLOG);
        std::thread::Builder::new()
            .name("trace-file".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut next = Some(first);
                    while let Some(line) = next {
                        if let Err(e) = writer.write(&line) {
                            tracing::warn!(file = %writer.path.display(), error = %e, "cannot write the trace file; recording stops");
                            return;
                        }
                        next = rx.try_recv().ok();
                    }
                    // Flushed when nothing else waits, so the file is whole between bursts.
                    let _ = writer.out.flush();
                }
            })?;
        Ok(TraceRecorder {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Records a task of `pool` that arrived at `arrived` and ran for `duration`.
    pub fn record(&self, pool: &str, arrived: tokio::time::Instant, duration: Duration) {
        let line = Line {
            arrived: arrived.into_std(),
            pool: pool.to_string(),
            duration,
        };
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "the trace file's writer falls behind; lines are dropped"
                );
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    max_size: u64,
    out: BufWriter<File>,
    size: u64,
    started: Instant,
}

impl Writer {
    fn open(path: PathBuf, max_size: u64) -> std::io::Result<Writer> {
        if path.exists() && std::fs::metadata(&path)?.len() > 0 {
            std::fs::rename(&path, rotated(&path))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        tracing::info!(file = %path.display(), started = %chrono::Utc::now().to_rfc3339(), "recording task arrivals (replay with warmpool simulate --start <started>)");
        Ok(Writer {
            path,
            max_size,
            out: BufWriter::new(file),
            size: 0,
            started: Instant::now(),
        })
    }

    fn write(&mut self, line: &Line) -> std::io::Result<()> {
        // A task that arrived before this file started is put at its start.
        let at = line.arrived.saturating_duration_since(self.started);
        let text = format!(
            "{{\"at\":{:.3},\"pool\":{},\"duration\":{:.3}}}\n",
            at.as_secs_f64(),
            serde_json::Value::from(line.pool.as_str()),
            line.duration.as_secs_f64()
        );
        if self.size > 0 && self.size + text.len() as u64 > self.max_size {
            self.out.flush()?;
            *self = Writer::open(self.path.clone(), self.max_size)?;
        }
        self.out.write_all(text.as_bytes())?;
        self.size += text.len() as u64;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::Trace;

    #[test]
    fn recorded_lines_replay_and_the_file_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let rec = TraceRecorder::open(&path, 200).unwrap();
        let now = tokio::time::Instant::now();
        for i in 0..6 {
            rec.record("coder", now, Duration::from_millis(800 + i));
        }
        drop(rec);
        // The thread ends when the sender is dropped; wait for its last flush.
        for _ in 0..100 {
            let a = std::fs::read_to_string(&path).unwrap_or_default();
            let b = std::fs::read_to_string(rotated(&path)).unwrap_or_default();
            if a.lines().count() + b.lines().count() == 6 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let old = std::fs::read_to_string(rotated(&path)).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.len() <= 200 && new.len() <= 200, "{old}\n{new}");
        assert_eq!(old.lines().count() + new.lines().count(), 6);
        let trace = Trace::parse(&old, "old").unwrap();
        assert_eq!(trace.tasks[0].pool, "coder");
        assert!((trace.tasks[0].duration - 0.8).abs() < 1e-9);
        assert!(trace.tasks[0].at < 1.0);
    }
}
