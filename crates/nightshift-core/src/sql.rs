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
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            // A PostgreSQL dollar-quoted body (`$$ … $$`, `$tag$ … $tag$`); `$1` is not one.
            b'$' if !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|n| i + 1 + n);
                if let Some(e) = tag_end.filter(|e| b[*e] == b'$') {
                    let tag = &sql[i..=e];
                    i = sql[e + 1..]
                        .find(tag)
                        .map_or(b.len(), |close| e + close + tag.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_found_outside_literals_comments_and_bodies() {
        let sql = "SELECT ':a', \":b\", x::date, $$ :c $$, $f$ :d $f$, $1 -- :e\n/* :f */ FROM t WHERE d = :ds AND r = :run_id";
        let found: Vec<String> = sql_params(sql).into_iter().map(|(_, n)| n).collect();
        assert_eq!(found, ["ds", "run_id"]);
        let (at, _) = sql_params(sql)[0];
        assert_eq!(&sql[at..at + 3], ":ds");
    }
}
