//! Named query parameters (`:start`, `:end`, `:ds`, `:run_id`) in the SQL of extracts and
//! sensors: which exist, and where a text uses them.

/// The parameters an extract query may use.
pub const SQL_PARAMS: &[&str] = &["start", "end", "ds", "run_id"];

/// Named parameters (`:name`) in a SQL text, outside string literals and comments, with
/// their byte offsets.
pub fn sql_params(sql: &str) -> Vec<(usize, String)> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b':' if b
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                && (i == 0 || b[i - 1] != b':') =>
            {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, sql[start + 1..i].to_owned()));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}
