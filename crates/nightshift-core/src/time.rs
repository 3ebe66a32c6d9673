//! Schedules, data intervals and the names derived from them (`ds`, `run_id`).
//!
//! A cron expression is matched against *wall-clock* (civil) times in the pipeline's zone;
//! each matching civil time is then resolved to one instant by our DST rule:
//!
//! - a civil time that does not exist (spring forward) resolves to the first valid instant
//!   after it, which is the end of the gap;
//! - a civil time that exists twice (fall back) resolves to its first occurrence.
//!
//! Several civil matches may resolve to the same instant (02:30 and 03:00 on a spring-forward
//! night); they fire once. Because the resolution is monotonic in civil time, fire times are
//! strictly increasing and consecutive fire times tile the timeline into data intervals with
//! no gap and no overlap. croner does the cron matching; it is asked about civil times only
//! (through a UTC proxy), so the DST rule above is ours alone and tested here.

use std::fmt;
use std::str::FromStr;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid cron expression `{expr}`: {reason}")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone `{0}`")]
    Zone(String),
    #[error("no fire time found within 10 years after {0}")]
    NoFireTime(Timestamp),
    #[error("invalid duration `{0}`")]
    Duration(String),
    #[error("invalid date `{0}`")]
    Date(String),
}

/// A parsed schedule in a time zone.
#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: TimeZone,
    tz_name: String,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} in {})", self.expr, self.tz_name)
    }
}

/// The slice of time one run processes: `[start, end)`. The scheduled run fires at `end`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct DataInterval {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Parses an IANA zone name using the system time zone database.
pub fn parse_zone(name: &str) -> Result<TimeZone, Error> {
    TimeZone::get(name).map_err(|_| Error::Zone(name.to_owned()))
}

impl Schedule {
    /// Parses a 5-field cron expression or a nickname (`@daily`, `@hourly`, `@weekly`,
    /// `@monthly`, `@yearly`), to be evaluated in the zone named `tz_name`.
    ///
    /// # Example
    /// ```
    /// use nightshift_core::time::Schedule;
    /// let s = Schedule::parse("0 0 * * *", "UTC").unwrap();
    /// let t: jiff::Timestamp = "2024-06-01T23:00:00Z".parse().unwrap();
    /// assert_eq!(s.next_fire(t).unwrap().to_string(), "2024-06-02T00:00:00Z");
    /// ```
    pub fn parse(expr: &str, tz_name: &str) -> Result<Self, Error> {
        let tz = parse_zone(tz_name)?;
        let cron = parse_cron(expr)?;
        Ok(Schedule {
            expr: expr.to_owned(),
            cron,
            tz,
            tz_name: tz_name.to_owned(),
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    pub fn tz_name(&self) -> &str {
        &self.tz_name
    }

    /// The first fire time strictly after `t`.
    pub fn next_fire(&self, t: Timestamp) -> Result<Timestamp, Error> {
        let mut civil = self.tz.to_datetime(t);
        // Bounded: a valid cron matches at least once every few years (Feb 29).
        for _ in 0..10_000 {
            let next = self.next_civil(civil).ok_or(Error::NoFireTime(t))?;
            let instant = resolve(&self.tz, next);
            if instant > t {
                return Ok(instant);
            }
            civil = next;
        }
        Err(Error::NoFireTime(t))
    }

    /// The first fire time at or after `t`.
    pub fn next_fire_inclusive(&self, t: Timestamp) -> Result<Timestamp, Error> {
        self.next_fire(t - SignedDuration::from_nanos(1))
            .and_then(|f| if f >= t { Ok(f) } else { self.next_fire(t) })
    }

    /// The last fire time strictly before `t`.
    pub fn prev_fire(&self, t: Timestamp) -> Result<Timestamp, Error> {
        // Start from the latest civil time that could resolve before `t`: in a fold the
        // civil time of `t` may be its second occurrence, so look from one hour later too.
        let mut civil = self
            .tz
            .to_datetime(t)
            .checked_add(3.hours())
            .map_err(|_| Error::NoFireTime(t))?;
        for _ in 0..10_000 {
            let prev = self.prev_civil(civil).ok_or(Error::NoFireTime(t))?;
            let instant = resolve(&self.tz, prev);
            if instant < t {
                return Ok(instant);
            }
            civil = prev;
        }
        Err(Error::NoFireTime(t))
    }

    /// The data interval that a run firing at `fire` covers.
    pub fn interval_ending_at(&self, fire: Timestamp) -> Result<DataInterval, Error> {
        Ok(DataInterval {
            start: self.prev_fire(fire)?,
            end: fire,
        })
    }

    /// The interval whose start is the first fire time at or after `t`.
    pub fn interval_starting_at_or_after(&self, t: Timestamp) -> Result<DataInterval, Error> {
        let start = self.next_fire_inclusive(t)?;
        Ok(DataInterval {
            start,
            end: self.next_fire(start)?,
        })
    }

    /// The first interval whose `ds` (local start date) is `date`, if the schedule has one.
    pub fn interval_for_ds(&self, date: Date) -> Result<Option<DataInterval>, Error> {
        let midnight = resolve(&self.tz, date.to_datetime(Time::midnight()));
        let iv = self.interval_starting_at_or_after(midnight)?;
        Ok((self.ds(&iv) == date).then_some(iv))
    }

    /// `ds`: the local date of the interval's start; it names the partition the run owns.
    pub fn ds(&self, iv: &DataInterval) -> Date {
        self.tz.to_datetime(iv.start).date()
    }

    /// `run_id`: the fire time (interval end) in local time, as `YYYYMMDD_HHMM`.
    pub fn run_id(&self, iv: &DataInterval) -> String {
        self.tz
            .to_datetime(iv.end)
            .strftime("%Y%m%d_%H%M")
            .to_string()
    }

    /// Why a fire time is not the cron's wall-clock time, if it is a DST special case:
    /// `Some("skipped")` when the matched local time did not exist (spring forward) and the
    /// run fires at the end of the gap; `Some("repeated")` when the local time exists twice
    /// (fall back) and the run fires at its first occurrence.
    pub fn dst_note(&self, fire: Timestamp) -> Option<&'static str> {
        let civil = self.tz.to_datetime(fire);
        let proxy = civil.to_zoned(TimeZone::UTC).ok()?;
        if !self.cron.is_time_matching(&proxy).unwrap_or(true) {
            return Some("skipped");
        }
        self.tz
            .to_ambiguous_timestamp(civil)
            .is_ambiguous()
            .then_some("repeated")
    }

    /// Local wall-clock rendering of an instant in this schedule's zone.
    pub fn local(&self, t: Timestamp) -> Zoned {
        t.to_zoned(self.tz.clone())
    }

    fn next_civil(&self, after: DateTime) -> Option<DateTime> {
        let proxy = after.to_zoned(TimeZone::UTC).ok()?;
        self.cron
            .find_next_occurrence(&proxy, false)
            .ok()
            .map(|z| z.datetime())
    }

    fn prev_civil(&self, before: DateTime) -> Option<DateTime> {
        let proxy = before.to_zoned(TimeZone::UTC).ok()?;
        self.cron
            .find_previous_occurrence(&proxy, false)
            .ok()
            .map(|z| z.datetime())
    }
}

fn parse_cron(expr: &str) -> Result<Cron, Error> {
    let err = |reason: String| Error::Cron {
        expr: expr.to_owned(),
        reason,
    };
    let trimmed = expr.trim();
    if !trimmed.starts_with('@') {
        let fields = trimmed.split_whitespace().count();
        if fields != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
    } else if ![
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ]
    .contains(&trimmed.to_ascii_lowercase().as_str())
    {
        return Err(err(
            "unknown nickname; use @hourly, @daily, @weekly, @monthly or @yearly".into(),
        ));
    }
    let parse = |text: &str| {
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(text)
    };
    parse(trimmed).map_err(|e| {
        // Name the field at fault: each is tried alone, the others `*`.
        const FIELDS: [(&str, &str); 5] = [
            ("minute", "0-59"),
            ("hour", "0-23"),
            ("day-of-month", "1-31"),
            ("month", "1-12 or JAN-DEC"),
            ("day-of-week", "0-7 (0 and 7 are Sunday) or SUN-SAT"),
        ];
        let parts: Vec<&str> = trimmed.split_whitespace().collect();
        let culprit = (!trimmed.starts_with('@'))
            .then(|| {
                (0..5).find(|&i| {
                    let mut alone = ["*"; 5];
                    alone[i] = parts[i];
                    parse(&alone.join(" ")).is_err()
                })
            })
            .flatten();
        match culprit {
            Some(i) => err(format!(
                "the {} field `{}` is not valid: it takes {}, with lists (`1,15`), ranges (`1-5`) and steps (`*/10`)",
                FIELDS[i].0, parts[i], FIELDS[i].1
            )),
            None => err(e.to_string()),
        }
    })
}

/// Resolves a civil time to an instant by the DST rule in the module docs.
pub fn resolve(tz: &TimeZone, civil: DateTime) -> Timestamp {
    match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil),
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil),
        AmbiguousOffset::Gap { before, .. } => {
            // The gap ends at the transition; `before` applied to the civil time lands after it.
            let after_transition = before.to_timestamp(civil);
            match after_transition {
                Ok(t) => tz
                    .preceding(t + SignedDuration::from_nanos(1))
                    .next()
                    .map(|tr| tr.timestamp())
                    .filter(|tr| *tr <= t)
                    .map(Ok)
                    .unwrap_or(Ok(t)),
                Err(e) => Err(e),
            }
        }
    }
    .unwrap_or(Timestamp::MAX)
}

/// Parses a duration in jiff's friendly format (`500ms`, `10s`, `1h30m`, `1h 30m`,
/// `10 minutes`, `2d`, a day being 24 hours) or ISO 8601 (`PT10M`). Negative durations and
/// calendar units (months, years) are refused.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, Error> {
    let bad = || Error::Duration(s.to_owned());
    let span: jiff::Span = s.trim().parse().map_err(|_| bad())?;
    if span.is_negative() {
        return Err(bad());
    }
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    std::time::Duration::try_from(d).map_err(|_| bad())
}

/// Formats a duration the way [`parse_duration`] reads it (largest units first).
/// A duration in milliseconds as people read it: `840ms`, `4.2s`, `21m18s`, `1h2m`.
pub fn human_ms(ms: i64) -> String {
    match ms.max(0) {
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        ms => format_duration(std::time::Duration::from_millis(ms as u64)),
    }
}

pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date, Error> {
    if s.len() != 10 {
        return Err(Error::Date(s.to_owned()));
    }
    Date::from_str(s).map_err(|_| Error::Date(s.to_owned()))
}

/// Parses a local time of day `HH:MM` or `HH:MM:SS`.
pub fn parse_time_of_day(s: &str) -> Result<Time, Error> {
    let bad = || Error::Date(s.to_owned());
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let num = |p: &str| p.parse::<i8>().map_err(|_| bad());
    let h = num(parts[0])?;
    let m = num(parts[1])?;
    let sec = parts.get(2).map(|p| num(p)).transpose()?.unwrap_or(0);
    Time::new(h, m, sec, 0).map_err(|_| bad())
}

/// Microseconds since the Unix epoch: the store's representation of an instant.
pub fn to_micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

pub fn from_micros(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = ts(from);
        let mut out = vec![];
        for _ in 0..n {
            t = s.next_fire(t).unwrap();
            out.push(s.local(t).strftime("%Y-%m-%d %H:%M %Z").to_string() + " = " + &t.to_string());
        }
        out
    }

    #[test]
    fn a_bad_cron_field_is_named_with_its_range() {
        let e = Schedule::parse("0 25 * * *", "UTC")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the hour field `25`") && e.contains("0-23"),
            "{e}"
        );
        let e = Schedule::parse("0 0 * 13 *", "UTC")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the month field `13`"), "{e}");
    }

    #[test]
    fn seed_run_ids() {
        let s = Schedule::parse("0 0 * * *", "UTC").unwrap();
        let fire = s.next_fire(ts("2024-06-01T23:00:00Z")).unwrap();
        let iv = s.interval_ending_at(fire).unwrap();
        assert_eq!(s.run_id(&iv), "20240602_0000");
        assert_eq!(s.ds(&iv).to_string(), "2024-06-01");
        assert_eq!(iv.start, ts("2024-06-01T00:00:00Z"));
        let iv2 = s
            .interval_for_ds(parse_date("2024-06-01").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(iv, iv2);
    }

    #[test]
    fn berlin_spring_forward_fires_once_at_gap_end() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            fires(&s, "2024-03-29T12:00:00Z", 4),
            [
                "2024-03-30 02:30 CET = 2024-03-30T01:30:00Z",
                "2024-03-31 03:00 CEST = 2024-03-31T01:00:00Z",
                "2024-04-01 02:30 CEST = 2024-04-01T00:30:00Z",
                "2024-04-02 02:30 CEST = 2024-04-02T00:30:00Z",
            ]
        );
    }

    #[test]
    fn dst_notes() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(s.dst_note(ts("2024-03-31T01:00:00Z")), Some("skipped"));
        assert_eq!(s.dst_note(ts("2024-10-27T00:30:00Z")), Some("repeated"));
        assert_eq!(s.dst_note(ts("2024-10-28T01:30:00Z")), None);
    }

    #[test]
    fn berlin_fall_back_fires_once_at_first_occurrence() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            fires(&s, "2024-10-26T12:00:00Z", 2),
            [
                "2024-10-27 02:30 CEST = 2024-10-27T00:30:00Z",
                "2024-10-28 02:30 CET = 2024-10-28T01:30:00Z",
            ]
        );
    }

    #[test]
    fn new_york_both_transitions() {
        let s = Schedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&s, "2024-03-09T12:00:00Z", 2),
            [
                "2024-03-10 03:00 EDT = 2024-03-10T07:00:00Z",
                "2024-03-11 02:30 EDT = 2024-03-11T06:30:00Z",
            ]
        );
        assert_eq!(
            fires(&s, "2024-11-02T12:00:00Z", 2),
            [
                "2024-11-03 02:30 EST = 2024-11-03T07:30:00Z",
                "2024-11-04 02:30 EST = 2024-11-04T07:30:00Z",
            ]
        );
        // New York repeats 01:00-01:59 when falling back: a 01:30 schedule fires once, at 01:30 EDT.
        let s130 = Schedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&s130, "2024-11-02T12:00:00Z", 2),
            [
                "2024-11-03 01:30 EDT = 2024-11-03T05:30:00Z",
                "2024-11-04 01:30 EST = 2024-11-04T06:30:00Z",
            ]
        );
        // The spring-forward run's interval is 23.5 hours and its successor 23.5 hours:
        // consecutive intervals share their boundaries.
        let fire = ts("2024-03-10T07:00:00Z");
        let iv = s.interval_ending_at(fire).unwrap();
        assert_eq!(iv.start, ts("2024-03-09T07:30:00Z"));
        assert_eq!(s.run_id(&iv), "20240310_0300");
    }

    #[test]
    fn hourly_in_fall_back_fires_once_per_wall_clock_hour() {
        let s = Schedule::parse("0 * * * *", "Europe/Berlin").unwrap();
        let got = fires(&s, "2024-10-26T22:30:00Z", 4);
        assert_eq!(
            got,
            [
                "2024-10-27 01:00 CEST = 2024-10-26T23:00:00Z",
                "2024-10-27 02:00 CEST = 2024-10-27T00:00:00Z",
                "2024-10-27 03:00 CET = 2024-10-27T02:00:00Z",
                "2024-10-27 04:00 CET = 2024-10-27T03:00:00Z",
            ]
        );
    }

    #[test]
    fn prev_fire_inverts_next_fire_across_dst() {
        for zone in [
            "Europe/Berlin",
            "America/New_York",
            "UTC",
            "Australia/Lord_Howe",
        ] {
            for expr in ["30 2 * * *", "0 * * * *", "*/20 1-3 * * *", "0 0 1 * *"] {
                let s = Schedule::parse(expr, zone).unwrap();
                let mut t = ts("2024-03-01T00:00:00Z");
                for _ in 0..400 {
                    let n = s.next_fire(t).unwrap();
                    assert!(n > t);
                    let n2 = s.next_fire(n).unwrap();
                    assert_eq!(s.prev_fire(n2).unwrap(), n, "{expr} in {zone} at {n2}");
                    t = n;
                }
            }
        }
    }

    #[test]
    fn bad_expressions() {
        assert!(matches!(
            Schedule::parse("0 0 * * * *", "UTC"),
            Err(Error::Cron { .. })
        ));
        assert!(matches!(
            Schedule::parse("61 0 * * *", "UTC"),
            Err(Error::Cron { .. })
        ));
        assert!(matches!(
            Schedule::parse("@fortnightly", "UTC"),
            Err(Error::Cron { .. })
        ));
        assert!(matches!(
            Schedule::parse("0 0 * * *", "Mars/Olympus"),
            Err(Error::Zone(_))
        ));
        assert!(Schedule::parse("@daily", "Europe/Berlin").is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap().as_secs(), 10);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("10 minutes").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("1h 30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("2d").unwrap().as_secs(), 172_800);
        assert_eq!(parse_duration("PT10M").unwrap().as_secs(), 600);
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("1 month").is_err());
        assert_eq!(format_duration(parse_duration("1h30m").unwrap()), "1h30m");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// Catchup over an arbitrary range yields each interval once: consecutive fires tile
            /// time (no gap, no overlap) and run ids are unique.
            #[test]
            fn intervals_tile(start_days in 0i64..3000, len_days in 1i64..90,
                              zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York"]),
                              expr in prop::sample::select(vec!["0 0 * * *", "30 2 * * *", "15 */6 * * *", "0 3 * * 1"])) {
                let s = Schedule::parse(expr, zone).unwrap();
                let from = ts("2018-01-01T00:00:00Z") + SignedDuration::from_hours(24 * start_days);
                let to = from + SignedDuration::from_hours(24 * len_days);
                let mut ids = std::collections::HashSet::new();
                let mut start = s.next_fire_inclusive(from).unwrap();
                let mut prev_end = None;
                while start < to {
                    let end = s.next_fire(start).unwrap();
                    let iv = s.interval_ending_at(end).unwrap();
                    prop_assert_eq!(iv.start, start);
                    if let Some(p) = prev_end { prop_assert_eq!(p, iv.start); }
                    prop_assert!(ids.insert(s.run_id(&iv)), "duplicate run id {}", s.run_id(&iv));
                    prev_end = Some(end);
                    start = end;
                }
            }
        }
    }
}
