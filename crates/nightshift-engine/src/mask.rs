//! Secrets out of logs. A secret is masked (`***`) in every form a task commonly prints it
//! in: as it is, base64 (standard and URL-safe, padded or not, at any of the three byte
//! alignments it can have inside a longer encoded text), percent-encoded (RFC 3986, form
//! encoding and Python's `quote`) and hex (lower and upper case).
//!
//! Lines are masked one at a time; [`Masker::straddle`] finds a form split across a
//! boundary (a line break, as `base64` wraps its output, or the cut of an over-long line),
//! so both halves are masked too.

use std::borrow::Cow;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Shorter encoded forms are left alone: they would match ordinary text.
const MIN_FORM: usize = 6;

/// RFC 3986's unreserved characters stay as they are.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Python's `urllib.parse.quote` also keeps `/`.
const PY_QUOTE: &AsciiSet = &RFC3986.remove(b'/');

#[derive(Clone, Default)]
pub struct Masker {
    forms: Vec<String>,
    matcher: Option<AhoCorasick>,
    longest: usize,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} forms)", self.forms.len())
    }
}

impl Masker {
    /// A masker for these secret values (values under 4 characters are left alone: masking
    /// `1` would garble every log).
    pub fn new(secrets: &[String]) -> Masker {
        let mut forms: Vec<String> = vec![];
        for s in secrets.iter().filter(|s| s.len() >= 4) {
            forms.push(s.clone());
            forms.extend(encoded_forms(s.as_bytes()).filter(|f| f.len() >= MIN_FORM));
        }
        forms.sort();
        forms.dedup();
        let matcher = (!forms.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&forms)
                    .ok()
            })
            .flatten();
        let longest = forms.iter().map(String::len).max().unwrap_or(0);
        Masker {
            forms,
            matcher,
            longest,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The line with every form of every secret replaced by `***`.
    pub fn mask<'a>(&self, text: Cow<'a, str>) -> Cow<'a, str> {
        match &self.matcher {
            Some(m) if m.is_match(text.as_ref()) => {
                let mut out = String::with_capacity(text.len());
                m.replace_all_with(&text, &mut out, |_, _, out| {
                    out.push_str("***");
                    true
                });
                out.into()
            }
            _ => text,
        }
    }

    /// When a form runs across the boundary between `before` and `after`: how many bytes at
    /// the end of `before` and at the start of `after` belong to it (both at char
    /// boundaries), to be masked on each side.
    pub fn straddle(&self, before: &str, after: &str) -> Option<(usize, usize)> {
        let m = self.matcher.as_ref()?;
        let keep = self.longest.saturating_sub(1);
        let a = tail(before, keep);
        let b = head(after, keep);
        let joined = format!("{a}{b}");
        let mut cut: Option<(usize, usize)> = None;
        for hit in overlapping(m, &joined) {
            if hit.0 < a.len() && hit.1 > a.len() {
                let (x, y) = cut.unwrap_or((0, 0));
                cut = Some((x.max(a.len() - hit.0), y.max(hit.1 - a.len())));
            }
        }
        cut
    }
}

/// Every match, overlapping ones included (a leftmost-longest matcher cannot search
/// overlapping, so this walks start positions).
fn overlapping(m: &AhoCorasick, hay: &str) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut start = 0;
    while start < hay.len() {
        match m.find(aho_corasick::Input::new(hay).span(start..hay.len())) {
            Some(hit) => {
                out.push((hit.start(), hit.end()));
                start = next_char(hay, hit.start());
            }
            None => break,
        }
    }
    out
}

fn next_char(s: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < s.len() && !s.is_char_boundary(j) {
        j += 1;
    }
    j
}

/// The last `n` bytes of `s`, moved forward to a char boundary.
fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// The first `n` bytes of `s`, moved back to a char boundary.
fn head(s: &str, n: usize) -> &str {
    let mut i = n.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// The secret's encoded forms. Base64 is taken at each alignment the secret can have in a
/// longer encoded text, keeping only the characters that depend on the secret alone.
fn encoded_forms(s: &[u8]) -> impl Iterator<Item = String> {
    let mut out = vec![];
    let engines = [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in &engines {
        for k in 0..3usize {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(s);
            let enc = engine.encode(&buf);
            let first = (8 * k).div_ceil(6);
            let last = (8 * (k + s.len())) / 6;
            if last > first {
                out.push(enc[first..last].to_owned());
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(s) {
        for set in [NON_ALPHANUMERIC, RFC3986, PY_QUOTE] {
            out.push(utf8_percent_encode(text, set).to_string());
            // Form encoding writes spaces as `+`.
            out.push(
                utf8_percent_encode(text, set)
                    .to_string()
                    .replace("%20", "+"),
            );
        }
    }
    let lower: String = s.iter().map(|b| format!("{b:02x}")).collect();
    out.push(lower.to_uppercase());
    out.push(lower);
    out.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const SECRET: &str = "s3cr3t/value+with?odd&chars";

    fn masked(line: &str) -> String {
        Masker::new(&[SECRET.to_owned()])
            .mask(line.into())
            .into_owned()
    }

    #[test]
    fn every_common_form_is_masked() {
        let forms = [
            SECRET.to_owned(),
            STANDARD.encode(SECRET),
            URL_SAFE.encode(SECRET),
            utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string(),
            utf8_percent_encode(SECRET, PY_QUOTE).to_string(),
            SECRET.bytes().map(|b| format!("{b:02x}")).collect(),
            SECRET.bytes().map(|b| format!("{b:02X}")).collect(),
            // Inside a longer encoded text, at each alignment.
            STANDARD.encode(format!("user:{SECRET}")),
            STANDARD.encode(format!("us:{SECRET}!")),
            STANDARD.encode(format!("u:{SECRET}!!")),
        ];
        for f in forms {
            let out = masked(&format!("token={f} end"));
            assert!(out.contains("***"), "{f} → {out}");
            // What is left is the encoded prefix and a few bits of the secret at most.
            let left = out
                .replace("token=", "")
                .replace(" end", "")
                .replace("***", "");
            assert!(left.len() <= 12, "{f} → {out}");
        }
        assert_eq!(masked("nothing here"), "nothing here");
    }

    #[test]
    fn a_form_split_at_a_boundary_is_found_on_both_sides() {
        let m = Masker::new(&[SECRET.to_owned()]);
        let b64 = STANDARD.encode(format!("{SECRET}{SECRET}"));
        let (a, b) = b64.split_at(20);
        let (x, y) = m.straddle(a, b).expect("a split form is found");
        assert!(x > 0 && y > 0);
        let (a, b) = SECRET.split_at(5);
        assert_eq!(m.straddle(a, b), Some((5, SECRET.len() - 5)));
        assert_eq!(m.straddle("hello", "world"), None);
    }

    #[test]
    fn short_values_are_left_alone() {
        let m = Masker::new(&["abc".to_owned()]);
        assert!(m.is_empty());
        assert_eq!(m.mask("abc".into()), "abc");
    }
}
