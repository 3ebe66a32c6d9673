//! The one place that writes to stdout and stderr for users.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use nightshift_core::TaskState;

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--log-format json`: every line this process writes is one JSON object.
pub fn set_json(on: bool) {
    JSON.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// A line of the command's result on stdout.
pub fn line(s: impl AsRef<str>) {
    use std::io::Write;
    let s = s.as_ref();
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a panic.
    if json() && !s.starts_with(['{', '[']) {
        let _ = writeln!(out, "{}", serde_json::json!({ "message": s }));
    } else {
        let _ = writeln!(out, "{s}");
    }
}

/// Bytes as they are (a log followed live), flushed at once.
pub fn raw(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

pub use nightshift_core::diag::inert;

/// Whether stderr gets colours: a terminal, `NO_COLOR` unset, and not JSON lines.
pub fn color() -> bool {
    !json()
        && crate::env::var("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// Diagnostics of a file on stderr, coloured like cargo's on a terminal.
pub fn diagnostics(d: &nightshift_core::diag::FileDiagnostics) {
    note(d.render(color()).trim_end());
}

/// A note for the person at the terminal, on stderr.
pub fn note(s: impl AsRef<str>) {
    use std::io::Write;
    let s = s.as_ref();
    if json() {
        let level = if s.starts_with("error") {
            "ERROR"
        } else if s.starts_with("warning") {
            "WARN"
        } else {
            "INFO"
        };
        for l in s.lines() {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{}",
                serde_json::json!({ "level": level, "message": l })
            );
        }
        return;
    }
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

/// The seed's run-log line: `Task extract_data: SUCCESS (2024-06-02 00:01)`.
/// With the try's duration (` in 4.2s`) and, on failure, the last line of its error.
pub fn task_line(
    task: &str,
    state: TaskState,
    at: Timestamp,
    tz: &TimeZone,
    took_ms: Option<i64>,
    error: Option<&str>,
) -> String {
    let mut line = format!(
        "Task {task}: {state} ({})",
        at.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M")
    );
    if let Some(ms) = took_ms {
        line.push_str(&format!(" in {}", duration_ms(Some(ms))));
    }
    if state.is_failure()
        && let Some(last) = error.and_then(|e| e.lines().rev().find(|l| !l.trim().is_empty()))
    {
        line.push_str(&format!(" — {}", inert(last.trim())));
    }
    line
}

pub fn ts(us: Option<i64>) -> String {
    us.map(|u| {
        nightshift_core::time::from_micros(u)
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    })
    .unwrap_or_else(|| "-".into())
}

pub fn duration_ms(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), nightshift_core::time::human_ms)
}

/// Left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    line(fmt(header.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        line(fmt(r.clone()));
    }
}

#[cfg(test)]
mod inert_tests {
    use super::inert;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(
            inert("a\u{1b}]52;c;aGk=\u{7}b\tc\n\u{9b}2J\u{7f}"),
            "a^[]52;c;aGk=^Gb\tc\n\\u{9b}2J^?"
        );
        assert_eq!(inert("plain"), "plain");
    }
}
