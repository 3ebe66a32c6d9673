//! What identifies a run wherever it travels: its pipeline, run_id, `ds` and data interval,
//! built once from the stored run and carried by every request and template context.

use jiff::Timestamp;
use jiff::civil::Date;

use crate::time::DataInterval;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunKeys {
    pub pipeline: String,
    pub run_id: String,
    /// The run's logical date, `YYYY-MM-DD` on the wire.
    pub ds: Date,
    /// RFC 3339 UTC instants on the wire.
    pub interval: DataInterval,
}

impl RunKeys {
    /// `ds` as text, `YYYY-MM-DD`.
    pub fn ds_text(&self) -> String {
        self.ds.to_string()
    }

    /// The interval's start as bound to queries and templates: RFC 3339 UTC, whole seconds.
    pub fn start_text(&self) -> String {
        rfc3339(self.interval.start)
    }

    /// The interval's end, as [`RunKeys::start_text`].
    pub fn end_text(&self) -> String {
        rfc3339(self.interval.end)
    }
}

/// An instant as nightshift shows and binds it: `2024-06-01T00:00:00Z`.
pub fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travels_as_plain_text() {
        let keys = RunKeys {
            pipeline: "nightly".into(),
            run_id: "scheduled__2024-06-01T00:00:00Z".into(),
            ds: jiff::civil::date(2024, 6, 1),
            interval: DataInterval {
                start: "2024-06-01T00:00:00Z".parse().unwrap(),
                end: "2024-06-02T00:00:00Z".parse().unwrap(),
            },
        };
        let json = serde_json::to_string(&keys).unwrap();
        assert_eq!(
            json,
            r#"{"pipeline":"nightly","run_id":"scheduled__2024-06-01T00:00:00Z","ds":"2024-06-01","interval":{"start":"2024-06-01T00:00:00Z","end":"2024-06-02T00:00:00Z"}}"#
        );
        assert_eq!(serde_json::from_str::<RunKeys>(&json).unwrap(), keys);
        assert_eq!(keys.start_text(), "2024-06-01T00:00:00Z");
    }
}
