//! A small typed reader over toml's spanned document tree.
//!
//! serde would stop at the first error and loses spans for unknown keys; reading the
//! spanned tree by hand lets validation collect every problem with its exact location.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Diagnostic, did_you_mean};

pub(crate) type Span = Range<usize>;

/// Keys (where written) and their values as JSON: a table of any TOML values.
pub(crate) type ValueMap = Vec<(Located<String>, serde_json::Value)>;

/// A value read from the file, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Located<T> {
    pub fn new(value: T, span: Span) -> Self {
        Located { value, span }
    }
}

/// Parses a whole document, reporting a syntax error with its span.
pub(crate) fn parse_document(source: &str) -> Result<Spanned<DeTable<'_>>, Diagnostic> {
    DeTable::parse(source).map_err(|e| {
        let msg = e.message().trim().trim_end_matches('.').to_owned();
        Diagnostic::error(format!("invalid TOML: {msg}"), e.span())
            .with_help("see https://toml.io for the syntax; strings need double quotes")
    })
}

/// Reads keys of one table; unknown keys are reported by [`TableReader::finish`].
pub(crate) struct TableReader<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Span,
    /// How the table is named in messages, e.g. "`[defaults]`" or "task `dbt_run`".
    pub(crate) label: String,
    known: Vec<&'static str>,
}

impl<'a, 'i> TableReader<'a, 'i> {
    /// `known` lists the accepted keys, possibly in several parts (common and specific).
    pub(crate) fn new(
        table: &'a DeTable<'i>,
        span: Span,
        label: impl Into<String>,
        known: &[&'static [&'static str]],
    ) -> Self {
        let known = known.iter().flat_map(|k| k.iter().copied()).collect();
        TableReader {
            table,
            span,
            label: label.into(),
            known,
        }
    }

    pub(crate) fn span(&self) -> Span {
        self.span.clone()
    }

    pub(crate) fn raw(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        debug_assert!(
            self.known.contains(&key),
            "key `{key}` missing from the known list"
        );
        self.table.get(key)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    fn type_error(
        &self,
        key: &str,
        expected: &str,
        v: &Spanned<DeValue<'_>>,
        diags: &mut Vec<Diagnostic>,
    ) {
        diags.push(Diagnostic::error(
            format!(
                "`{key}` in {} must be {expected}, found {}",
                self.label,
                v.get_ref().type_str()
            ),
            Some(v.span()),
        ));
    }

    pub(crate) fn string(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Located<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Located::new(s.to_string(), v.span())),
            _ => {
                self.type_error(key, "a string", v, diags);
                None
            }
        }
    }

    pub(crate) fn bool(&self, key: &str, diags: &mut Vec<Diagnostic>) -> Option<Located<bool>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Located::new(*b, v.span())),
            _ => {
                self.type_error(key, "true or false", v, diags);
                None
            }
        }
    }

    pub(crate) fn uint(
        &self,
        key: &str,
        max: u64,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Located<u64>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => {
                let text = i.as_str().replace('_', "");
                match i64::from_str_radix(text.trim_start_matches('+'), i.radix()) {
                    Ok(n) if n >= 0 && (n as u64) <= max => Some(Located::new(n as u64, v.span())),
                    _ => {
                        diags.push(Diagnostic::error(
                            format!(
                                "`{key}` in {} must be an integer from 0 to {max}",
                                self.label
                            ),
                            Some(v.span()),
                        ));
                        None
                    }
                }
            }
            _ => {
                self.type_error(key, "an integer", v, diags);
                None
            }
        }
    }

    /// A string, or an array of strings; `allow_single` accepts a bare string as one element.
    pub(crate) fn string_list(
        &self,
        key: &str,
        allow_single: bool,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Vec<Located<String>>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) if allow_single => Some(vec![Located::new(s.to_string(), v.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(Located::new(s.to_string(), item.span())),
                        other => diags.push(Diagnostic::error(
                            format!(
                                "`{key}` in {} must hold strings only, found {}",
                                self.label,
                                other.type_str()
                            ),
                            Some(item.span()),
                        )),
                    }
                }
                Some(out)
            }
            _ => {
                self.type_error(key, "an array of strings", v, diags);
                None
            }
        }
    }

    pub(crate) fn table(
        &self,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<(&'a DeTable<'i>, Span)> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some((t, v.span())),
            _ => {
                self.type_error(key, "a table", v, diags);
                None
            }
        }
    }

    /// An array of tables (`[[task]]`).
    pub(crate) fn tables(
        &self,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Vec<(&'a DeTable<'i>, Span)> {
        let Some(v) = self.raw(key) else {
            return vec![];
        };
        match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Table(t) => Some((t, item.span())),
                    other => {
                        diags.push(Diagnostic::error(
                            format!("`{key}` entries must be tables, found {}", other.type_str()),
                            Some(item.span()),
                        ));
                        None
                    }
                })
                .collect(),
            _ => {
                self.type_error(key, &format!("an array of tables (`[[{key}]]`)"), v, diags);
                vec![]
            }
        }
    }

    /// A table of string values (`env = { A = "b" }`).
    pub(crate) fn string_map(
        &self,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Vec<(Located<String>, Located<String>)> {
        let Some((t, _)) = self.table(key, diags) else {
            return vec![];
        };
        let mut out = vec![];
        for (k, v) in t.iter() {
            match v.get_ref() {
                DeValue::String(s) => out.push((
                    Located::new(k.get_ref().to_string(), k.span()),
                    Located::new(s.to_string(), v.span()),
                )),
                other => diags.push(Diagnostic::error(
                    format!(
                        "`{key}.{}` in {} must be a string, found {}",
                        k.get_ref(),
                        self.label,
                        other.type_str()
                    ),
                    Some(v.span()),
                )),
            }
        }
        out
    }

    /// A table whose values may be of any TOML type, each as JSON (a datetime as its text),
    /// with the string leaves at any depth and where they were written (to check templates).
    pub(crate) fn value_map(
        &self,
        key: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> (ValueMap, Vec<Located<String>>) {
        let Some((t, _)) = self.table(key, diags) else {
            return (vec![], vec![]);
        };
        let mut strings = vec![];
        let mut out = vec![];
        for (k, v) in t.iter() {
            let path = format!("{key}.{}", k.get_ref());
            if let Some(j) = json_of(v, &path, &self.label, &mut strings, diags) {
                out.push((Located::new(k.get_ref().to_string(), k.span()), j));
            }
        }
        (out, strings)
    }

    /// Reports every key not in the known list, with a suggestion when one is close.
    pub(crate) fn finish(self, diags: &mut Vec<Diagnostic>) {
        for (k, _) in self.table.iter() {
            let name = k.get_ref();
            if !self.known.contains(&name.as_ref()) {
                let mut d = Diagnostic::error(
                    format!("unknown key `{name}` in {}", self.label),
                    Some(k.span()),
                );
                d = match did_you_mean(name, self.known.iter().copied()) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!("known keys here: {}", self.known.join(", "))),
                };
                diags.push(d);
            }
        }
    }
}

/// A TOML value as JSON; `strings` collects its string leaves with their spans.
fn json_of(
    v: &toml::Spanned<DeValue<'_>>,
    path: &str,
    label: &str,
    strings: &mut Vec<Located<String>>,
    diags: &mut Vec<Diagnostic>,
) -> Option<serde_json::Value> {
    use serde_json::Value;
    let bad = |what: &str, diags: &mut Vec<Diagnostic>| {
        diags.push(Diagnostic::error(
            format!("`{path}` in {label} is {what}, which JSON cannot carry"),
            Some(v.span()),
        ));
        None
    };
    match v.get_ref() {
        DeValue::String(s) => {
            strings.push(Located::new(s.to_string(), v.span()));
            Some(Value::String(s.to_string()))
        }
        DeValue::Boolean(b) => Some(Value::Bool(*b)),
        DeValue::Integer(i) => {
            let text = i.as_str().replace('_', "");
            let (neg, digits) = match text.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, text.trim_start_matches('+')),
            };
            match i64::from_str_radix(digits, i.radix()) {
                Ok(n) => Some(Value::from(if neg { -n } else { n })),
                Err(_) => bad("an integer out of range", diags),
            }
        }
        DeValue::Float(f) => {
            let text = f.as_str().replace('_', "");
            match text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => Some(Value::Number(n)),
                None => bad("not a finite number", diags),
            }
        }
        DeValue::Datetime(d) => Some(Value::String(d.to_string())),
        DeValue::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (n, item) in items.iter().enumerate() {
                out.push(json_of(
                    item,
                    &format!("{path}[{n}]"),
                    label,
                    strings,
                    diags,
                )?);
            }
            Some(Value::Array(out))
        }
        DeValue::Table(t) => {
            let mut out = serde_json::Map::new();
            for (k, item) in t.iter() {
                let key = k.get_ref().to_string();
                let j = json_of(item, &format!("{path}.{key}"), label, strings, diags)?;
                out.insert(key, j);
            }
            Some(Value::Object(out))
        }
    }
}
