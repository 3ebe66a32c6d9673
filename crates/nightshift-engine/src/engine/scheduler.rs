//! Scheduling: which runs are due (fire times, catch-up in bounded batches, skipped
//! intervals), creating them, and noticing edited pipeline files.

use super::*;

/// Runs created per pipeline in one loop iteration (one transaction each).
pub const CATCHUP_BATCH: usize = 200;

/// Skipped intervals are counted up to this many (an every-minute pipeline started years
/// ago would otherwise be walked minute by minute).
pub(crate) const SKIP_COUNT_LIMIT: u64 = 10_000;

/// What scheduling found: the next fire time, and whether catch-up has more to create.
#[derive(Debug, Default)]
pub(crate) struct Scheduled {
    pub(crate) next_fire: Option<Timestamp>,
    pub(crate) more: bool,
}

/// Creates the run for one interval of a pipeline (or finds the one that exists).
pub fn create_run(
    store: &Store,
    lp: &LoadedPipeline,
    iv: DataInterval,
    trigger: Trigger,
    now: Timestamp,
) -> Result<Created, Error> {
    let p = &lp.pipeline;
    let version = store.put_version(&p.name, &lp.source, to_micros(now))?;
    let run_id = p.schedule.run_id(&iv);
    let run = new_run(p, iv, &run_id, trigger, &version, now);
    Ok(store.create_run(&run, &new_tasks(p))?)
}

/// The row of a new run of `p` for one interval.
fn new_run<'a>(
    p: &'a Pipeline,
    iv: DataInterval,
    run_id: &'a str,
    trigger: Trigger,
    version: &'a str,
    now: Timestamp,
) -> NewRun<'a> {
    NewRun {
        run_id,
        pipeline: &p.name,
        ds: p.schedule.ds(&iv),
        data_interval_start: to_micros(iv.start),
        data_interval_end: to_micros(iv.end),
        now: to_micros(now),
        trigger,
        version,
    }
}

/// Creates the runs of many intervals of one pipeline in one transaction (catch-up);
/// intervals that have a run already are left alone. Returns the pks created.
pub fn create_runs(
    store: &Store,
    lp: &LoadedPipeline,
    ivs: &[DataInterval],
    trigger: Trigger,
    now: Timestamp,
) -> Result<Vec<i64>, Error> {
    let p = &lp.pipeline;
    let version = store.put_version(&p.name, &lp.source, to_micros(now))?;
    let tasks = new_tasks(p);
    let run_ids: Vec<String> = ivs.iter().map(|iv| p.schedule.run_id(iv)).collect();
    let runs: Vec<NewRun<'_>> = ivs
        .iter()
        .zip(&run_ids)
        .map(|(iv, run_id)| new_run(p, *iv, run_id, trigger, &version, now))
        .collect();
    Ok(store.create_runs(&runs, &tasks)?)
}

/// One task instance per task of the pipeline, for a new or rerun run.
pub(crate) fn new_tasks(p: &Pipeline) -> Vec<NewTask<'_>> {
    p.tasks
        .iter()
        .map(|t| NewTask {
            task_id: &t.id,
            max_tries: t.max_tries(),
            pool: t.pool.as_deref(),
        })
        .collect()
}

/// Puts a finished run back to run again on the pipeline's current version.
pub fn rerun(
    store: &Store,
    lp: &LoadedPipeline,
    run_pk: i64,
    trigger: Trigger,
    now: Timestamp,
) -> Result<bool, Error> {
    let p = &lp.pipeline;
    let version = store.put_version(&p.name, &lp.source, to_micros(now))?;
    let tasks = new_tasks(p);
    Ok(store.reset_run(run_pk, to_micros(now), trigger, &version, &tasks)?)
}

impl Engine {
    /// Re-reads pipeline files when they changed. A file that became invalid keeps its last
    /// valid version running; a removed file stops being scheduled.
    pub(crate) fn reload_if_changed(&mut self) {
        let fp = project::fingerprint(&self.project.dir);
        if fp == self.fingerprint {
            return;
        }
        self.fingerprint = fp;
        match project::load(&self.project.dir) {
            Ok(mut fresh) => {
                for problem in &fresh.problems {
                    if problem.has_errors() {
                        error!(file = %problem.path.display(), "invalid pipeline file; keeping its last valid version\n{problem}");
                    }
                }
                project::keep_last_valid(&self.project, &mut fresh);
                for (name, lp) in &fresh.pipelines {
                    let changed = self
                        .project
                        .pipelines
                        .get(name)
                        .is_none_or(|old| old.source != lp.source);
                    if changed {
                        info!(pipeline = %name, "pipeline file changed; new runs use this version");
                        self.cursors.remove(name);
                        self.hashes.remove(name);
                    }
                }
                for name in self.project.pipelines.keys() {
                    if !fresh.pipelines.contains_key(name) {
                        info!(pipeline = %name, "pipeline removed; runs in flight finish on their version");
                        self.cursors.remove(name);
                    }
                }
                self.project = fresh;
            }
            Err(e) => error!(error = %e, "cannot read the project; keeping the loaded pipelines"),
        }
    }

    /// Creates the runs whose intervals have ended by `now` (one per interval, ever), at
    /// most [`CATCHUP_BATCH`] per pipeline per call, each batch in one transaction: a
    /// pipeline catching up on thousands of intervals proceeds in steps, and every other
    /// pipeline's due run is created in the same call.
    pub(crate) fn schedule_due_runs(&mut self, now: Timestamp) -> Result<Scheduled, Error> {
        let mut out = Scheduled::default();
        let mut names: Vec<String> = self.project.pipelines.keys().cloned().collect();
        names.sort();
        for name in names {
            if self.paused.contains(&name) {
                continue;
            }
            let lp = self.project.pipelines[&name].clone();
            let p = lp.pipeline.clone();
            let first_start = p.schedule.next_fire_inclusive(p.start_instant())?;
            let mut cursor = match self.cursors.get(&name) {
                Some(c) => *c,
                None => self.initial_cursor(&lp, first_start, now)?,
            };
            let mut batch = vec![];
            loop {
                let fire = p.schedule.next_fire(cursor)?;
                if fire > now {
                    out.next_fire = Some(out.next_fire.map_or(fire, |n: Timestamp| n.min(fire)));
                    break;
                }
                if batch.len() >= CATCHUP_BATCH {
                    out.more = true;
                    break;
                }
                let iv = p.schedule.interval_ending_at(fire)?;
                if p.in_range(&iv) {
                    batch.push(iv);
                }
                cursor = fire;
            }
            self.create_scheduled(&lp, &batch, now)?;
            self.cursors.insert(name, cursor);
        }
        Ok(out)
    }

    pub(crate) fn create_scheduled(
        &mut self,
        lp: &LoadedPipeline,
        ivs: &[DataInterval],
        now: Timestamp,
    ) -> Result<(), Error> {
        if ivs.is_empty() {
            return Ok(());
        }
        let created = create_runs(&self.store, lp, ivs, Trigger::Scheduled, now)?;
        match created.len() {
            0 => {}
            1 => {
                let iv = ivs.last().copied().unwrap_or(ivs[0]);
                info!(pipeline = %lp.pipeline.name, run_id = %lp.pipeline.schedule.run_id(&iv), run = created[0], "run created")
            }
            n => {
                let first = lp.pipeline.schedule.run_id(&ivs[0]);
                let last = lp.pipeline.schedule.run_id(&ivs[ivs.len() - 1]);
                info!(pipeline = %lp.pipeline.name, runs = n, from = %first, to = %last, "runs created")
            }
        }
        if !created.is_empty() {
            crash_if(&self.opts.crash_at, "after_run_created", None);
        }
        Ok(())
    }

    /// Where scheduling of a pipeline starts when this engine first sees it: with catchup,
    /// after its latest scheduled run (or at start_date), so every missed interval gets a
    /// run; without, at the latest ended interval, whose run is created now — and the
    /// intervals passed over are counted and said once.
    pub(crate) fn initial_cursor(
        &mut self,
        lp: &LoadedPipeline,
        first_start: Timestamp,
        now: Timestamp,
    ) -> Result<Timestamp, Error> {
        let p = lp.pipeline.clone();
        let latest_run = self
            .store
            .latest_interval_start(&p.name, Some(Trigger::Scheduled))?
            .map(from_micros);
        let from = latest_run.map_or(first_start, |l| l.max(first_start));
        if p.catchup {
            return self.limited_catch_up(&p, from, latest_run.is_some(), now);
        }
        let latest = if p.schedule.next_fire_inclusive(now)? == now {
            now
        } else {
            p.schedule.prev_fire(now)?
        };
        if latest <= first_start {
            return Ok(first_start);
        }
        let iv = p.schedule.interval_ending_at(latest)?;
        // Intervals that ended between where scheduling stood and the latest one: the range
        // is exact, the count is walked up to a bound (an every-minute pipeline started
        // years ago would otherwise cost a million schedule steps).
        let first_end = p.schedule.next_fire(from)?;
        let last_end = p.schedule.prev_fire(latest)?;
        if first_end < latest && last_end >= first_end {
            let first = p.schedule.interval_ending_at(first_end)?;
            let last = p.schedule.interval_ending_at(last_end)?;
            let mut skipped = 0u64;
            let mut at = from;
            while skipped < SKIP_COUNT_LIMIT {
                let end = p.schedule.next_fire(at)?;
                if end >= latest {
                    break;
                }
                skipped += 1;
                at = end;
            }
            let more = if skipped >= SKIP_COUNT_LIMIT {
                "more than "
            } else {
                ""
            };
            info!(
                pipeline = %p.name,
                "catchup = false: skipped {more}{skipped} interval(s) from {} to {} (runs {} to {}); running only the latest",
                first.start, last.end, p.schedule.run_id(&first), p.schedule.run_id(&last)
            );
            let mut map = self.stats.skipped.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(p.name.clone()).or_insert(0) += skipped;
        }
        if p.in_range(&iv) {
            self.create_scheduled(lp, &[iv], now)?;
        }
        Ok(latest)
    }
}

impl Engine {
    /// With catchup, where scheduling starts so that at most `catchup_limit` of the latest
    /// ended intervals get runs; the earlier ones are said once, with the backfill command
    /// that would fill them.
    fn limited_catch_up(
        &mut self,
        p: &Pipeline,
        from: Timestamp,
        has_run: bool,
        now: Timestamp,
    ) -> Result<Timestamp, Error> {
        if p.catchup_limit == 0 {
            return Ok(from);
        }
        let mut latest = if p.schedule.next_fire_inclusive(now)? == now {
            now
        } else {
            p.schedule.prev_fire(now)?
        };
        // Intervals after end_date never get runs: count back from the last one that does.
        if let Some(end) = p.end_date
            && let Ok(Some(iv)) = p.schedule.interval_for_ds(end)
        {
            latest = latest.min(iv.end);
        }
        // The first interval without a run starts at `from`, or after the latest run's.
        let first_missing = if has_run {
            p.schedule.next_fire(from)?
        } else {
            from
        };
        let mut start = latest;
        for _ in 0..p.catchup_limit {
            start = p.schedule.prev_fire(start)?;
            if start <= first_missing {
                return Ok(from);
            }
        }
        let first = p.schedule.interval_starting_at_or_after(first_missing)?;
        let last = p.schedule.interval_ending_at(start)?;
        let mut skipped = 0u64;
        let mut at = first_missing;
        while skipped < SKIP_COUNT_LIMIT && at < start {
            skipped += 1;
            at = p.schedule.next_fire(at)?;
        }
        let more = if skipped >= SKIP_COUNT_LIMIT {
            "more than "
        } else {
            ""
        };
        let (a, b) = (p.schedule.ds(&first), p.schedule.ds(&last));
        info!(
            pipeline = %p.name,
            "catch-up limited to the latest {} interval(s) (catchup_limit): skipped {more}{skipped} from ds {a} to ds {b}; fill them with `nightshift backfill {} --from {a} --to {b}`",
            p.catchup_limit, p.name
        );
        let mut map = self.stats.skipped.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(p.name.clone()).or_insert(0) += skipped;
        // Scheduling goes on from the start of the earliest interval it keeps.
        Ok(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimClock;
    use proptest::prelude::*;

    fn project(
        dir: &std::path::Path,
        schedule: &str,
        zone: &str,
        start: &str,
        catchup: bool,
    ) -> Project {
        let src = format!(
            "name = \"p\"\nschedule = \"{schedule}\"\ntimezone = \"{zone}\"\nstart_date = \"{start}\"\ncatchup = {catchup}\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"
        );
        std::fs::create_dir_all(dir.join("pipelines")).unwrap();
        std::fs::write(dir.join("pipelines/p.toml"), src).unwrap();
        project::load(dir).unwrap()
    }

    fn engine_at(dir: &std::path::Path, p: Project, now: Timestamp) -> Engine {
        let store = Arc::new(Store::open_file(&dir.join(".nightshift/nightshift.db")).unwrap());
        Engine::new(
            p,
            store,
            Arc::new(SimClock::new(now)),
            Mode::Scheduler { until: None },
            Options::default(),
        )
    }

    /// The intervals a catchup must have created by `now`, computed independently.
    fn expected(p: &Pipeline, now: Timestamp) -> Vec<(i64, String)> {
        let mut out = vec![];
        let mut start = p.schedule.next_fire_inclusive(p.start_instant()).unwrap();
        loop {
            let end = p.schedule.next_fire(start).unwrap();
            if end > now {
                return out;
            }
            out.push((
                to_micros(start),
                p.schedule.run_id(&DataInterval { start, end }),
            ));
            start = end;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Catchup over an arbitrary range, interrupted by a restart at an arbitrary point
        /// and repeated, creates exactly one run per interval.
        #[test]
        fn catchup_creates_one_run_per_interval(
            start_day in 1u8..28,
            first_hours in 1i64..(24 * 20),
            more_hours in 0i64..(24 * 20),
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York"]),
            schedule in prop::sample::select(vec!["0 0 * * *", "30 2 * * *", "0 */6 * * *", "15 3 * * 1-5"]),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let start = format!("2024-03-{start_day:02}");
            let base: Timestamp = format!("{start}T00:00:00Z").parse().unwrap();
            let now1 = base + SignedDuration::from_hours(first_hours);
            let now2 = now1 + SignedDuration::from_hours(more_hours);
            let p = project(dir.path(), schedule, zone, &start, true);
            let pipeline = p.pipelines["p"].pipeline.clone();
            let mut e1 = engine_at(dir.path(), p.clone(), now1);
            e1.schedule_due_runs(now1).unwrap();
            e1.schedule_due_runs(now1).unwrap();
            drop(e1);
            // A restart, and a second scheduler on the same store, both catching up.
            let mut e2 = engine_at(dir.path(), p.clone(), now2);
            let mut e3 = engine_at(dir.path(), p, now2);
            e2.schedule_due_runs(now2).unwrap();
            e3.schedule_due_runs(now2).unwrap();
            let runs = e2.store.runs("p", u32::MAX).unwrap();
            let got: Vec<(i64, String)> = runs.iter().map(|r| (r.data_interval_start, r.run_id.clone())).collect();
            prop_assert_eq!(got, expected(&pipeline, now2));
        }
    }

    #[test]
    fn catch_up_creates_only_the_latest_catchup_limit_intervals() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path(), "0 0 * * *", "UTC", "2024-01-01", true);
        let now: Timestamp = "2024-06-10T12:00:00Z".parse().unwrap();
        let mut e = engine_at(dir.path(), p, now);
        while e.schedule_due_runs(now).unwrap().more {}
        let runs = e.store.runs("p", u32::MAX).unwrap();
        // 161 days ended (2024-01-01 to 2024-06-09); the latest 100 get runs.
        assert_eq!(runs.len(), 100);
        let mut ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        ids.sort();
        assert_eq!(ids[0], "20240303_0000");
        assert_eq!(ids[99], "20240610_0000");
        assert_eq!(e.stats.skipped.lock().unwrap()["p"], 61);
        // A restart a day later creates the one new interval, not the skipped ones.
        let later: Timestamp = "2024-06-11T12:00:00Z".parse().unwrap();
        let mut e = engine_at(dir.path(), e.project.clone(), later);
        while e.schedule_due_runs(later).unwrap().more {}
        assert_eq!(e.store.runs("p", u32::MAX).unwrap().len(), 101);
    }

    #[test]
    fn without_catchup_only_the_latest_interval_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path(), "0 0 * * *", "UTC", "2024-01-01", false);
        let now: Timestamp = "2024-06-10T12:00:00Z".parse().unwrap();
        let mut e = engine_at(dir.path(), p, now);
        e.schedule_due_runs(now).unwrap();
        let later: Timestamp = "2024-06-12T00:00:01Z".parse().unwrap();
        e.schedule_due_runs(later).unwrap();
        let ids: Vec<String> = e
            .store
            .runs("p", 100)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(ids, ["20240610_0000", "20240611_0000", "20240612_0000"]);
    }

    /// A pipeline with thousands of intervals to catch up gets a bounded batch per call;
    /// another pipeline's due run is created in the same call.
    #[test]
    fn catch_up_is_batched_and_never_holds_another_pipeline_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(dir.path(), "@hourly", "UTC", "2023-01-01", true);
        // Every interval is caught up here (no limit), to see the batches.
        let file = dir.path().join("pipelines/p.toml");
        let src = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            src.replace("catchup = true\n", "catchup = true\ncatchup_limit = 0\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pipelines/m.toml"),
            "schedule = \"* * * * *\"\nstart_date = \"2024-01-01\"\ncatchup = false\n[[task]]\nid = \"t\"\ncommand = [\"true\"]\n",
        )
        .unwrap();
        let p2 = project::load(dir.path()).unwrap();
        assert_eq!(p2.pipelines.len(), 2, "{:?}", p.pipelines.keys());
        let now: Timestamp = "2024-02-20T00:00:30Z".parse().unwrap();
        let mut e = engine_at(dir.path(), p2, now);
        let first = e.schedule_due_runs(now).unwrap();
        assert!(first.more, "catch-up continues in the next iteration");
        assert_eq!(e.store.runs("p", u32::MAX).unwrap().len(), CATCHUP_BATCH);
        assert_eq!(
            e.store.runs("m", 10).unwrap().len(),
            1,
            "the other pipeline's run"
        );
        let mut calls = 2;
        while e.schedule_due_runs(now).unwrap().more {
            calls += 1;
        }
        // 2023-01-01 to 2024-02-20: 415 days of hourly intervals.
        assert_eq!(e.store.runs("p", u32::MAX).unwrap().len(), 415 * 24);
        assert_eq!(calls, (415 * 24_usize).div_ceil(CATCHUP_BATCH));
        // The working set of a pass stays bounded however many runs are queued.
        assert!(
            e.working_runs().unwrap().len() <= 2 * super::super::claims::QUEUED_WINDOW as usize
        );
    }

    #[test]
    fn the_next_fire_is_reported_for_the_sleep() {
        let dir = tempfile::tempdir().unwrap();
        let p = project(
            dir.path(),
            "30 2 * * *",
            "Europe/Berlin",
            "2024-03-30",
            true,
        );
        let now: Timestamp = "2024-03-30T12:00:00Z".parse().unwrap();
        let mut e = engine_at(dir.path(), p, now);
        let next = e.schedule_due_runs(now).unwrap().next_fire;
        assert_eq!(
            next,
            Some("2024-03-31T01:00:00Z".parse().unwrap()),
            "spring forward: fires at the end of the gap"
        );
    }
}
