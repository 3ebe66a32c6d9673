//! A try's log: created on its first line, written through a buffer, capped at
//! `log_max_bytes` (head and tail kept, a marker between), and never allowed to change the
//! task's outcome when the disk refuses it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nightshift_core::clock::Clock;

use crate::mask::Masker;

/// The log is written through a buffer of this size (one write syscall per buffer, not per
/// line), flushed whenever the task pauses so a live tail stays current.
pub(crate) const LOG_BUFFER: usize = 64 * 1024;

/// A try's log file, created on its first line (a task that prints nothing costs no file).
/// Keeps the first half of its cap; past that, the latest output goes to two alternating
/// tail files, joined to the log with a marker line when the try ends.
pub struct LogSink {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    mask: Masker,
    /// The last line, held back while masking is on until the next line (or a pause)
    /// shows whether a secret runs across the line break between them.
    pending: Option<Pending>,
    last_error: Option<String>,
    cap: u64,
    head: u64,
    tail: Option<Tail>,
    /// Bytes offered after the head was full.
    after_head: u64,
    error: Option<String>,
    stamp: (i64, String),
}

struct Pending {
    stream: String,
    text: String,
    stamp: String,
}

struct Tail {
    paths: [PathBuf; 2],
    cur: usize,
    file: BufWriter<File>,
    len: u64,
}

impl LogSink {
    pub fn new(path: PathBuf, mask: Masker, cap: u64) -> Self {
        LogSink {
            path,
            file: None,
            mask,
            pending: None,
            last_error: None,
            cap: cap.max(4096),
            head: 0,
            tail: None,
            after_head: 0,
            error: None,
            stamp: (i64::MIN, String::new()),
        }
    }

    fn failed(&mut self, what: &str, e: std::io::Error) {
        if self.error.is_some() {
            return;
        }
        let msg = format!("cannot write the try's log `{}`: {e}", self.path.display());
        tracing::warn!(log = %self.path.display(), error = %e, "{what}: the try goes on without its log");
        // Where the disk allows a last line, say why the log stops here.
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush();
            let _ = writeln!(f.get_mut(), "[nightshift] {msg}; output after this is lost");
        }
        self.error = Some(msg);
    }

    fn open(&mut self) -> Option<&mut BufWriter<File>> {
        if self.file.is_none() && self.error.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => {
                    self.head = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(BufWriter::with_capacity(LOG_BUFFER, f));
                }
                Err(e) => self.failed("cannot open the log", e),
            }
        }
        self.file.as_mut()
    }

    /// The last `error: …` line the task wrote to stderr, without the prefix.
    pub fn take_last_error(&mut self) -> Option<String> {
        self.last_error.take()
    }

    /// Writes one line with its time and stream.
    pub fn line(&mut self, clock: &dyn Clock, stream: &str, raw: &[u8]) {
        self.stamp_now(clock);
        self.line_stamped(stream, raw);
    }

    /// Takes the time for the lines that follow (the readers take it once per chunk read:
    /// lines that arrived together share it, and a clock read per line would be a visible
    /// share of a chatty task's cost).
    pub fn stamp_now(&mut self, clock: &dyn Clock) {
        let now = clock.now();
        let ms = now.as_millisecond();
        if self.stamp.0 != ms {
            self.stamp = (ms, now.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
    }

    /// Writes one line with the time last taken.
    pub fn line_stamped(&mut self, stream: &str, raw: &[u8]) {
        let mut end = raw.len();
        while end > 0 && matches!(raw[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        // Valid UTF-8 (nearly always) is written as it is, without a copy.
        let text = match std::str::from_utf8(&raw[..end]) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => String::from_utf8_lossy(&raw[..end]),
        };
        let text = self.mask.mask(text);
        if stream == "err"
            && let Some(e) = text.strip_prefix("error: ")
        {
            self.last_error = Some(e.chars().take(2000).collect());
        }
        if self.mask.is_empty() {
            self.write_text(stream, &text, None);
            return;
        }
        let mut text = text.into_owned();
        if let Some(mut p) = self.pending.take() {
            if p.stream == stream
                && let Some((x, y)) = self.mask.straddle(&p.text, &text)
            {
                p.text.truncate(p.text.len() - x);
                p.text.push_str("***");
                text = format!("***{}", &text[y..]);
            }
            self.write_text(&p.stream, &p.text, Some(&p.stamp));
        }
        self.pending = Some(Pending {
            stream: stream.to_owned(),
            text,
            stamp: self.stamp.1.clone(),
        });
    }

    fn write_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            self.write_text(&p.stream, &p.text, Some(&p.stamp));
        }
    }

    /// Writes one masked line, stamped with `stamp` or the time last taken.
    fn write_text(&mut self, stream: &str, text: &str, stamp: Option<&str>) {
        if self.error.is_some() {
            return;
        }
        let saved = stamp.map(|s| std::mem::replace(&mut self.stamp.1, s.to_owned()));
        let len = (self.stamp.1.len() + stream.len() + text.len() + 5) as u64;
        let head_room = self.cap / 2;
        if self.head + len <= head_room && self.tail.is_none() {
            let stamp = std::mem::take(&mut self.stamp.1);
            let r = match self.open() {
                Some(f) => write_line(f, &stamp, stream, text),
                None => Ok(()),
            };
            self.stamp.1 = stamp;
            match r {
                Ok(()) => self.head += len,
                Err(e) => self.failed("cannot write the log", e),
            }
        } else {
            self.after_head += len;
            if let Err(e) = self.tail_line(len, stream, text) {
                self.failed("cannot write the log's tail", e);
            }
        }
        if let Some(s) = saved {
            self.stamp.1 = s;
        }
    }

    fn tail_line(&mut self, len: u64, stream: &str, text: &str) -> std::io::Result<()> {
        let part = self.cap / 4;
        if self.tail.is_none() {
            let paths = [
                self.path.with_extension("log.tail0"),
                self.path.with_extension("log.tail1"),
            ];
            let file = BufWriter::with_capacity(LOG_BUFFER, File::create(&paths[0])?);
            self.tail = Some(Tail {
                paths,
                cur: 0,
                file,
                len: 0,
            });
        }
        let Some(t) = self.tail.as_mut() else {
            return Ok(());
        };
        if t.len + len > part {
            t.file.flush()?;
            t.cur = 1 - t.cur;
            t.file = BufWriter::with_capacity(LOG_BUFFER, File::create(&t.paths[t.cur])?);
            t.len = 0;
        }
        write_line(&mut t.file, &self.stamp.1, stream, text)?;
        t.len += len;
        Ok(())
    }

    pub fn flush(&mut self) {
        self.write_pending();
        let r = match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        };
        if let Err(e) = r {
            self.failed("cannot write the log", e);
        }
        if let Some(t) = self.tail.as_mut() {
            let _ = t.file.flush();
        }
    }

    /// Joins the tail to the log behind a marker saying how much was dropped. Returns the
    /// warning to keep on the try, if any.
    pub fn finish(&mut self) -> Option<String> {
        self.flush();
        if let Some(t) = self.tail.take() {
            drop(t.file);
            let older = &t.paths[1 - t.cur];
            let newer = &t.paths[t.cur];
            let kept: u64 = [older, newer]
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            let dropped = self.after_head.saturating_sub(kept);
            let marker = format!(
                "[nightshift] log cap of {} reached: {} of output dropped here; the last {} follow",
                bytes(self.cap),
                bytes(dropped),
                bytes(kept)
            );
            let joined = (|| -> std::io::Result<()> {
                let f = self
                    .file
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("log not open"))?;
                writeln!(f, "{marker}")?;
                for p in [older, newer] {
                    if let Ok(mut src) = File::open(p) {
                        std::io::copy(&mut src, f)?;
                    }
                }
                f.flush()
            })();
            let _ = std::fs::remove_file(older);
            let _ = std::fs::remove_file(newer);
            if let Err(e) = joined {
                self.failed("cannot join the log's tail", e);
            }
            if self.error.is_none() {
                return Some(format!(
                    "log cut at its cap of {}: {} dropped between head and tail",
                    bytes(self.cap),
                    bytes(dropped)
                ));
            }
        }
        self.file = None;
        self.error.clone()
    }
}

/// `STAMP [stream] text` and a newline, as plain copies into the buffer (no formatting
/// machinery: this runs once per line of output).
fn write_line(
    f: &mut BufWriter<File>,
    stamp: &str,
    stream: &str,
    text: &str,
) -> std::io::Result<()> {
    f.write_all(stamp.as_bytes())?;
    f.write_all(b" [")?;
    f.write_all(stream.as_bytes())?;
    f.write_all(b"] ")?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MIB {
        format!("{:.1} MiB", n as f64 / MIB)
    } else {
        format!("{n} bytes")
    }
}

/// Writes a line into a try's log as the orchestrator (not the task).
pub fn log_note(path: &Path, clock: &dyn Clock, text: &str) {
    let mut sink = LogSink::new(path.to_owned(), Masker::default(), u64::MAX);
    sink.line(clock, "nightshift", text.as_bytes());
    sink.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use nightshift_core::clock::SystemClock;

    #[test]
    fn a_log_past_its_cap_keeps_head_and_tail_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.log");
        let mut sink = LogSink::new(path.clone(), Masker::new(&["hunter2".into()]), 40_000);
        for i in 0..5000 {
            sink.line(&SystemClock, "out", format!("line {i} hunter2").as_bytes());
        }
        let warning = sink.finish().unwrap();
        assert!(warning.contains("dropped"), "{warning}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 45_000, "{}", text.len());
        assert!(text.contains("[out] line 0 ***"));
        assert!(text.contains("[out] line 4999 ***"));
        assert!(!text.contains("line 2500 "));
        assert!(text.contains("[nightshift] log cap of 40000 bytes reached"));
        assert!(!dir.path().join("t.log.tail0").exists());
    }
}
