//! Container logs: reading the CRI log files the shim writes, as the
//! kubelet serves them to `kubectl logs`.
//!
//! ```text
//!  LOG.N … LOG.1, LOG      rotated (oldest first), then current; one line each:
//!  2016-10-06T00:17:09.669794202Z stdout F text      (F: full line, P: part of a longer one)
//!        │
//!        ▼ since (time), tail (last N lines), timestamps (keep the time), limit (bytes)
//!  text\n …  then, with follow, what is appended until the container stops
//! ```

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// How often a followed log is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// What `kubectl logs` asks for (`PodLogOptions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Prefix every line with the time it was written (RFC 3339, nanoseconds).
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    /// The text continues on the next line (tag `P`).
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line (without its newline); `None` if it is not CRI format.
pub fn parse(line: &[u8]) -> Option<CriLine<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let stream = std::str::from_utf8(fields.next()?).ok()?;
    let partial = match fields.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let content = fields.next().unwrap_or_default();
    Some(CriLine {
        time,
        stream,
        partial,
        content,
    })
}

impl CriLine<'_> {
    fn written(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(self.time)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// What the reader gets for this line.
    fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.content.len() + 40);
        if timestamps {
            out.extend_from_slice(self.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(self.content);
        if !self.partial {
            out.push(b'\n');
        }
        out
    }
}

/// The log files of a container, oldest first.
pub fn files(current: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (current.parent(), current.file_name()) {
        let prefix = format!("{}.", name.to_string_lossy());
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(n) = file.strip_prefix(&prefix).and_then(|n| n.parse().ok()) {
                rotated.push((n, entry.path()));
            }
        }
    }
    rotated.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    let mut all: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    all.push(current.to_owned());
    all
}

/// Where the reader of a followed log stops.
#[derive(Debug)]
struct Limit {
    left: Option<u64>,
}

impl Limit {
    /// Cuts `chunk` to what is left; `false` once the limit is reached.
    fn take(&mut self, chunk: &mut Vec<u8>) -> bool {
        match &mut self.left {
            None => true,
            Some(left) => {
                if chunk.len() as u64 >= *left {
                    chunk.truncate(*left as usize);
                    *left = 0;
                    false
                } else {
                    *left -= chunk.len() as u64;
                    true
                }
            }
        }
    }
}

/// Keeps what `options` select of one more line, in `kept`.
fn select(raw: &[u8], options: &LogOptions, kept: &mut VecDeque<Vec<u8>>) {
    let Some(line) = parse(raw) else { return };
    if options
        .since
        .is_some_and(|since| line.written().is_none_or(|t| t < since))
    {
        return;
    }
    kept.push_back(line.render(options.timestamps));
    if options.tail_lines.is_some_and(|n| kept.len() as u64 > n) {
        kept.pop_front();
    }
}

/// Streams the log at `current` as `options` ask into `sink`; with
/// `follow`, keeps going (across rotations) until `running` says the
/// container stopped and everything it wrote was sent, or the receiver
/// goes away. Runs on a thread of its own: it blocks.
pub fn stream(
    current: &Path,
    options: &LogOptions,
    running: impl Fn() -> bool,
    sink: &tokio::sync::mpsc::Sender<Bytes>,
) {
    let mut limit = Limit {
        left: options.limit_bytes,
    };
    // The current file is opened first and read to its end; following goes
    // on from exactly there.
    let opened = File::open(current).ok();
    let mut inode = opened
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| m.ino());
    let mut kept = VecDeque::new();
    let all = files(current);
    for path in &all[..all.len() - 1] {
        let Ok(file) = File::open(path) else { continue };
        for raw in BufReader::new(file).split(b'\n').map_while(Result::ok) {
            select(&raw, options, &mut kept);
        }
    }
    let mut pending = Vec::new();
    let mut reader = opened.map(BufReader::new);
    if let Some(reader) = reader.as_mut() {
        while let Ok(n) = reader.read_until(b'\n', &mut pending) {
            if n == 0 || pending.last() != Some(&b'\n') {
                break;
            }
            pending.pop();
            select(&pending, options, &mut kept);
            pending.clear();
        }
    }
    for mut chunk in kept {
        let more = limit.take(&mut chunk);
        if sink.blocking_send(Bytes::from(chunk)).is_err() || !more {
            return;
        }
    }
    if !options.follow {
        return;
    }
    let Some(mut reader) = reader else {
        return;
    };
    let mut stopping = false;
    loop {
        // Everything complete that is there now.
        let mut progressed = false;
        loop {
            match reader.read_until(b'\n', &mut pending) {
                Ok(0) | Err(_) => break,
                Ok(_) if pending.last() != Some(&b'\n') => break,
                Ok(_) => {
                    progressed = true;
                    pending.pop();
                    if let Some(line) = parse(&pending) {
                        let mut chunk = line.render(options.timestamps);
                        let more = limit.take(&mut chunk);
                        if sink.blocking_send(Bytes::from(chunk)).is_err() || !more {
                            return;
                        }
                    }
                    pending.clear();
                }
            }
        }
        if progressed {
            continue;
        }
        // Rotated: the old file is drained; go on with the new one.
        if let Ok(file) = File::open(current)
            && file.metadata().is_ok_and(|m| Some(m.ino()) != inode)
        {
            inode = file.metadata().ok().map(|m| m.ino());
            reader = BufReader::new(file);
            pending.clear();
            continue;
        }
        if stopping || sink.is_closed() {
            return;
        }
        // One more pass after it stopped picks up its last words.
        stopping = !running();
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, lines: &[&str]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).unwrap();
    }

    fn read(current: &Path, options: &LogOptions) -> String {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        stream(current, options, || false, &tx);
        drop(tx);
        let mut out = Vec::new();
        while let Ok(chunk) = rx.try_recv() {
            out.extend_from_slice(&chunk);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_parse_as_the_cri_writes_them() {
        let line = parse(b"2016-10-06T00:17:09.669794202Z stdout F hello world").unwrap();
        assert_eq!(line.stream, "stdout");
        assert!(!line.partial);
        assert_eq!(line.content, b"hello world");
        assert_eq!(
            parse(b"2016-10-06T00:17:09.669794202Z stderr P ")
                .unwrap()
                .content,
            b""
        );
        assert!(parse(b"garbage").is_none());
        assert!(parse(b"t stdout X text").is_none());
    }

    #[test]
    fn options_select_and_shape_the_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        write(
            &dir.path().join("log.2"),
            &["2024-01-01T00:00:01.000000000Z stdout F one"],
        );
        write(
            &dir.path().join("log.1"),
            &["2024-01-01T00:00:02.000000000Z stderr F two"],
        );
        write(
            &log,
            &[
                "2024-01-01T00:00:03.000000000Z stdout P thr",
                "2024-01-01T00:00:03.500000000Z stdout F ee",
                "2024-01-01T00:00:04.000000000Z stdout F four",
            ],
        );
        assert_eq!(
            read(&log, &LogOptions::default()),
            "one\ntwo\nthree\nfour\n"
        );
        let tail = LogOptions {
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        assert_eq!(read(&log, &tail), "ee\nfour\n");
        let since = LogOptions {
            since: Some("2024-01-01T00:00:02Z".parse().unwrap()),
            timestamps: true,
            ..LogOptions::default()
        };
        assert_eq!(
            read(&log, &since),
            "2024-01-01T00:00:02.000000000Z two\n2024-01-01T00:00:03.000000000Z thr\
             2024-01-01T00:00:03.500000000Z ee\n2024-01-01T00:00:04.000000000Z four\n"
        );
        let limited = LogOptions {
            limit_bytes: Some(6),
            ..LogOptions::default()
        };
        assert_eq!(read(&log, &limited), "one\ntw");
        assert_eq!(read(&dir.path().join("none"), &LogOptions::default()), "");
    }

    #[test]
    fn following_reads_what_is_appended_and_survives_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        write(&log, &["2024-01-01T00:00:01Z stdout F first"]);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reader = {
            let (log, running) = (log.clone(), running.clone());
            std::thread::spawn(move || {
                let options = LogOptions {
                    follow: true,
                    ..LogOptions::default()
                };
                stream(
                    &log,
                    &options,
                    || running.load(std::sync::atomic::Ordering::SeqCst),
                    &tx,
                );
            })
        };
        assert_eq!(&rx.blocking_recv().unwrap()[..], b"first\n");
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(file, "2024-01-01T00:00:02Z stdout F second").unwrap();
        assert_eq!(&rx.blocking_recv().unwrap()[..], b"second\n");
        // Rotate: the old file gets a last line, then a new file starts.
        writeln!(file, "2024-01-01T00:00:03Z stdout F third").unwrap();
        std::fs::rename(&log, dir.path().join("log.1")).unwrap();
        write(&log, &["2024-01-01T00:00:04Z stdout F fourth"]);
        assert_eq!(&rx.blocking_recv().unwrap()[..], b"third\n");
        assert_eq!(&rx.blocking_recv().unwrap()[..], b"fourth\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(
            rx.blocking_recv().is_none(),
            "ends once the container stopped"
        );
        reader.join().unwrap();
    }
}
