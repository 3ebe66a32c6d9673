//! `{{ name }}` templates in task arguments and environment values.
//!
//! Rendering is plain substitution into one argv element; no value is ever handed to a
//! shell, so a value cannot inject shell syntax whatever it contains.

use std::ops::Range;

/// The names a template may use. Each is also exported as `NIGHTSHIFT_<NAME>`.
pub const VARIABLES: &[&str] = &[
    "ds",
    "ds_nodash",
    "run_id",
    "data_interval_start",
    "data_interval_end",
    "try_number",
    "pipeline",
    "task_id",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `{{` without a closing `}}`; the range covers the opening braces.
    Unclosed(Range<usize>),
    /// A name not in [`VARIABLES`].
    Unknown { name: String, at: Range<usize> },
}

/// Checks a template, returning the byte ranges of its placeholders within `s`.
pub fn check(s: &str) -> Result<Vec<Range<usize>>, TemplateError> {
    let mut out = vec![];
    let mut i = 0;
    while let Some(open) = s[i..].find("{{").map(|o| o + i) {
        let Some(close) = s[open + 2..].find("}}").map(|c| c + open + 2) else {
            return Err(TemplateError::Unclosed(open..open + 2));
        };
        let name = s[open + 2..close].trim();
        if !VARIABLES.contains(&name) {
            return Err(TemplateError::Unknown {
                name: name.to_owned(),
                at: open..close + 2,
            });
        }
        out.push(open..close + 2);
        i = close + 2;
    }
    Ok(out)
}

/// Values of the template variables for one try.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub keys: crate::run::RunKeys,
    pub try_number: u32,
    pub task_id: String,
}

impl Context {
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "ds" => self.keys.ds_text(),
            "ds_nodash" => self.keys.ds.strftime("%Y%m%d").to_string(),
            "run_id" => self.keys.run_id.clone(),
            "data_interval_start" => self.keys.start_text(),
            "data_interval_end" => self.keys.end_text(),
            "try_number" => self.try_number.to_string(),
            "pipeline" => self.keys.pipeline.clone(),
            "task_id" => self.task_id.clone(),
            _ => return None,
        })
    }

    /// Every variable as `NIGHTSHIFT_<NAME>` environment pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        VARIABLES
            .iter()
            .filter_map(|n| {
                self.get(n)
                    .map(|v| (format!("NIGHTSHIFT_{}", n.to_ascii_uppercase()), v))
            })
            .collect()
    }

    /// Renders a template that [`check`] accepted; unknown names render empty.
    pub fn render(&self, s: &str) -> String {
        let Ok(ranges) = check(s) else {
            return s.to_owned();
        };
        let mut out = String::with_capacity(s.len());
        let mut last = 0;
        for r in ranges {
            out.push_str(&s[last..r.start]);
            let name = s[r.start + 2..r.end - 2].trim();
            out.push_str(&self.get(name).unwrap_or_default());
            last = r.end;
        }
        out.push_str(&s[last..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_checks() {
        let ctx = Context {
            keys: crate::run::RunKeys {
                ds: jiff::civil::date(2024, 6, 1),
                run_id: "20240602_0000".into(),
                ..Default::default()
            },
            try_number: 2,
            ..Default::default()
        };
        assert_eq!(
            ctx.render("--date={{ ds }}/{{ds_nodash}}"),
            "--date=2024-06-01/20240601"
        );
        assert_eq!(ctx.render("{{ try_number }}"), "2");
        assert!(matches!(
            check("{{ dss }}"),
            Err(TemplateError::Unknown { .. })
        ));
        assert!(matches!(check("x {{ ds"), Err(TemplateError::Unclosed(_))));
        let env = ctx.env();
        assert!(env.contains(&("NIGHTSHIFT_DS".into(), "2024-06-01".into())));
        assert!(env.contains(&("NIGHTSHIFT_RUN_ID".into(), "20240602_0000".into())));
    }

    #[test]
    fn values_are_never_reinterpreted() {
        let ctx = Context {
            keys: crate::run::RunKeys {
                run_id: "$(rm -rf /); `x` {{ pipeline }}".into(),
                pipeline: "R".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            ctx.render("{{ run_id }}"),
            "$(rm -rf /); `x` {{ pipeline }}"
        );
    }
}
