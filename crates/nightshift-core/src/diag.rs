//! Diagnostics for user-written files: a message, a byte span in a named file, and a hint.
//!
//! Every configuration problem is collected (not just the first) and rendered the way
//! cargo and rustc do (with annotate-snippets, rustc's own renderer): `error: …`, then
//! ` --> file:line:col`, the source line and a caret, then `= help: …`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Option<Range<usize>>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn warning(message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            message: message.into(),
            span,
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Diagnostics bound to the file they were found in, ready to print.
#[derive(Debug, Clone)]
pub struct FileDiagnostics {
    pub path: PathBuf,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl FileDiagnostics {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Every diagnostic rendered, with cargo's colours when `color`.
    pub fn render(&self, color: bool) -> String {
        self.diagnostics
            .iter()
            .map(|d| render_with(&self.path, &self.source, d, color))
            .collect()
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Renders one diagnostic with its location, in the form `path:line:col`, the way cargo
/// does (annotate-snippets); `color` adds cargo's colours for a terminal.
pub fn render(path: &Path, source: &str, d: &Diagnostic) -> String {
    render_with(path, source, d, false)
}

/// Text from outside (a file being quoted, a task's log) made safe to print on a terminal:
/// control characters other than newline and tab are shown inertly (`^[` for ESC, `^?` for
/// DEL, `\u{9b}` for the C1 controls), so no escape sequence in it can move the cursor,
/// retitle the window or set the clipboard (OSC 52).
pub fn inert(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_bad) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_inert(&mut out, c);
    }
    out.into()
}

fn is_bad(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || c == '\u{7f}'
}

fn push_inert(out: &mut String, c: char) {
    match c {
        '\u{7f}' => out.push_str("^?"),
        c if (c as u32) < 0x20 && is_bad(c) => {
            out.push('^');
            out.push(char::from(b'@' + c as u8));
        }
        c if is_bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// [`inert`] for a source and the spans into it: each byte offset moved past what the
/// replacements added before it.
fn inert_source(source: &str) -> (std::borrow::Cow<'_, str>, impl Fn(usize) -> usize) {
    let mut shifts: Vec<(usize, usize)> = vec![];
    let mut out = String::new();
    if source.chars().any(is_bad) {
        out.reserve(source.len() + 16);
        for (i, c) in source.char_indices() {
            let before = out.len();
            push_inert(&mut out, c);
            let grown = (out.len() - before) - c.len_utf8();
            if grown > 0 {
                let total = shifts.last().map_or(0, |s| s.1) + grown;
                shifts.push((i + c.len_utf8(), total));
            }
        }
    }
    let map = move |pos: usize| {
        let k = shifts.partition_point(|s| s.0 <= pos);
        pos + if k == 0 { 0 } else { shifts[k - 1].1 }
    };
    let text = if out.is_empty() {
        source.into()
    } else {
        out.into()
    };
    (text, map)
}

pub fn render_with(path: &Path, source: &str, d: &Diagnostic, color: bool) -> String {
    use annotate_snippets::{Level, Renderer, Snippet};
    let (source, at) = inert_source(source);
    let source: &str = &source;
    let d = &Diagnostic {
        span: d.span.as_ref().map(|s| at(s.start)..at(s.end)),
        message: inert(&d.message).into_owned(),
        help: d.help.as_deref().map(|h| inert(h).into_owned()),
        ..d.clone()
    };
    let level = match d.severity {
        Severity::Error => Level::Error,
        Severity::Warning => Level::Warning,
    };
    let origin = path.display().to_string();
    let mut message = level.title(&d.message);
    if let Some(span) = &d.span {
        // The caret covers the span on its first line only; a multi-line span (a whole
        // table) is marked on its first line.
        let start = floor_char_boundary(source, span.start.min(source.len()));
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let end = floor_char_boundary(source, span.end.min(line_end)).max(start);
        message = message.snippet(
            Snippet::source(source)
                .origin(&origin)
                .fold(true)
                .annotation(level.span(start..end)),
        );
    }
    if let Some(help) = &d.help {
        message = message.footer(Level::Help.title(help));
    }
    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = renderer.render(message).to_string();
    if d.span.is_none() {
        // A problem of the whole file: name the file under the message.
        let first = out.find('\n').unwrap_or(out.len());
        out.insert_str(first, &format!("\n --> {origin}"));
    }
    out.push('\n');
    out
}

impl fmt::Display for FileDiagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.diagnostics {
            f.write_str(&render(&self.path, &self.source, d))?;
        }
        Ok(())
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, src.find('=').unwrap()), (1, 3));
        let second_eq = src.rfind('=').unwrap();
        assert_eq!(line_col(src, second_eq), (2, 4));
    }

    #[test]
    fn quoted_escape_sequences_are_shown_not_obeyed() {
        let src = "name = \"a\u{1b}]52;c;aGk=\u{7}b\"\nbad = 1\n";
        let at = src.find("bad").unwrap();
        let d = Diagnostic::error("unknown key `bad`", Some(at..at + 3));
        let out = render(Path::new("p.toml"), src, &d);
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out}");
        assert!(out.contains("p.toml:2:1"), "{out}");
        let one = Diagnostic::error("x", Some(0..4));
        assert!(render(Path::new("q.toml"), "\u{1b}[2Jname = 1\n", &one).contains("^[[2J"));
    }

    #[test]
    fn renders_caret_under_span() {
        let src = "name = \"x\"\nretires = 2\n";
        let d = Diagnostic::error("unknown key `retires`", Some(11..18))
            .with_help("did you mean `retries`?");
        let text = render(Path::new("pipelines/x.toml"), src, &d);
        assert_eq!(
            text,
            "error: unknown key `retires`\n --> pipelines/x.toml:2:1\n  |\n2 | retires = 2\n  | ^^^^^^^\n  |\n  = help: did you mean `retries`?\n"
        );
        // A problem of the whole file names the file; an empty span marks one column.
        let whole = Diagnostic::error("the pipeline has no tasks", None).with_help("add one");
        assert_eq!(
            render(Path::new("p.toml"), src, &whole),
            "error: the pipeline has no tasks\n --> p.toml\n = help: add one\n"
        );
        let at_start = Diagnostic::error("missing `schedule`", Some(0..0));
        let text = render(Path::new("p.toml"), src, &at_start);
        assert!(text.contains(" --> p.toml:1:1\n"), "{text}");
        assert!(text.contains("1 | name = \"x\"\n"), "{text}");
        // Colour for terminals.
        assert!(render_with(Path::new("p.toml"), src, &d, true).contains("\u{1b}["));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("retires", ["retries", "timeout"]),
            Some("retries")
        );
        assert_eq!(did_you_mean("zzz", ["retries", "timeout"]), None);
    }
}
