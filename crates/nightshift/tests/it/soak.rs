//! The soak test (not in the default run; `bash tools/soak.sh`): one pipeline every minute
//! on the simulated clock for 30 simulated days (`NIGHTSHIFT_SOAK_DAYS`), with random task
//! failures. Afterwards every interval has exactly one run, every failure was retried per
//! policy, and the scheduler's memory and open files did not grow.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

fn proc_figures(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

#[test]
#[ignore = "soak: minutes long; run with `bash tools/soak.sh`"]
fn soak_every_minute_for_30_simulated_days_with_random_failures() {
    #[allow(clippy::disallowed_methods)]
    let days: i64 = std::env::var("NIGHTSHIFT_SOAK_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(30);
    let p = TestProject::new();
    p.file("nightshift.toml", "parallelism = 8\n");
    // About one try in ten fails; two retries, one second apart in data time.
    p.file(
        "pipelines/minutely.toml",
        "name = \"minutely\"\nschedule = \"* * * * *\"\ntimezone = \"UTC\"\nstart_date = \"2024-01-01\"\ncatchup = true\nmax_active_runs = 4\n\
         [defaults]\nretries = 2\nretry_delay = \"1s\"\ntimeout = \"1m\"\n\
         [[task]]\nid = \"work\"\ncommand = [\"sh\", \"-c\", \"test $(od -An -N1 -tu1 /dev/urandom) -ge 26\"]\n",
    );
    let from: jiff::Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
    // Half a minute past the last fire time, so the last interval is created too.
    let until =
        from + jiff::SignedDuration::from_hours(24 * days) + jiff::SignedDuration::from_secs(30);
    let expected = days * 1440;
    let mut up = p.spawn(
        &[
            "up",
            "--simulate-from",
            &from.to_string(),
            "--simulate-until",
            &until.to_string(),
        ],
        &[("NIGHTSHIFT_LOG", "warn")],
        "up",
    );
    let db = p.path().join(".nightshift/nightshift.db");
    p.wait_for("the store", || db.exists());
    let c = rusqlite::Connection::open(&db).unwrap();
    let count = || -> i64 {
        c.query_row(
            "SELECT COUNT(*) FROM pipeline_runs WHERE status IN ('SUCCESS', 'FAILED')",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
    };
    let started = Instant::now();
    let mut early = None;
    let mut late = None;
    loop {
        if let Some(st) = up.try_wait().unwrap() {
            assert!(st.success(), "{}", p.read("up.stderr"));
            break;
        }
        let done = count();
        if let Some(f) = proc_figures(up.id()) {
            if early.is_none() && done >= expected / 10 {
                early = Some((done, f));
            }
            if done >= expected * 9 / 10 {
                late = Some((done, f));
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(6 * 3600),
            "the soak did not finish"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();

    // Exactly one run per interval, every one finished.
    let (runs, distinct, first, last): (i64, i64, i64, i64) = c
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT data_interval_start), MIN(data_interval_start), MAX(data_interval_start) FROM pipeline_runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(runs, expected, "one run per minute");
    assert_eq!(distinct, expected);
    assert_eq!(last - first, (expected - 1) * 60_000_000);
    let unfinished: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM pipeline_runs WHERE status NOT IN ('SUCCESS', 'FAILED')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(unfinished, 0);

    // Every failed try was followed by the next try until the third.
    let mut tries: BTreeMap<i64, Vec<(u32, String)>> = BTreeMap::new();
    let mut s = c
        .prepare("SELECT ti, try_number, state FROM task_tries ORDER BY ti, try_number")
        .unwrap();
    for row in s
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap()
    {
        let (ti, n, st) = row.unwrap();
        tries.entry(ti).or_default().push((n, st));
    }
    let (mut failures, mut retried, mut gave_up) = (0, 0, 0);
    for (ti, ts) in &tries {
        for (i, (n, st)) in ts.iter().enumerate() {
            assert_eq!(
                *n as usize,
                i + 1,
                "try numbers of {ti} run 1, 2, 3: {ts:?}"
            );
            match st.as_str() {
                "FAILED" if *n < 3 => {
                    failures += 1;
                    assert!(
                        i + 1 < ts.len(),
                        "failed try {n} of {ti} was not retried: {ts:?}"
                    );
                    retried += 1;
                }
                "FAILED" => {
                    failures += 1;
                    gave_up += 1;
                    assert_eq!(i + 1, ts.len());
                }
                "SUCCESS" => assert_eq!(i + 1, ts.len(), "nothing after a success: {ts:?}"),
                other => panic!("try {n} of {ti} ended {other}"),
            }
        }
    }
    assert_eq!(tries.len() as i64, expected);
    assert!(failures > 0, "failures were injected");

    // Memory and open files stayed flat from 10% to 90% of the way.
    let ((d0, (rss0, fd0)), (d1, (rss1, fd1))) = (early.unwrap(), late.unwrap());
    println!(
        "soak: {expected} runs in {elapsed:?}; {failures} failed tries, {retried} retried, {gave_up} runs failed after 3 tries; \
         RSS {rss0} kB at {d0} runs -> {rss1} kB at {d1}; fds {fd0} -> {fd1}"
    );
    assert!(
        rss1 <= rss0 * 3 / 2 + 10_240,
        "memory grew: {rss0} kB -> {rss1} kB"
    );
    assert!(fd1 <= fd0 + 8, "open files grew: {fd0} -> {fd1}");
}
