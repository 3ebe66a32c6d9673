//! One pass over the working set: activating runs, deciding pending tasks, finishing
//! runs, and claiming and starting ready tries.

use super::*;

/// Queued runs per pipeline and class a scheduler pass considers (oldest first).
pub(crate) const QUEUED_WINDOW: u32 = 64;

/// How long ready work a pass left unclaimed may be claimed without a pass. A pass still
/// comes this often under a backlog: it decides what became ready, finishes runs, reports
/// ended tasks and lets newer or higher-priority work in.
pub(crate) const BACKLOG_FOR: Duration = Duration::from_millis(100);

/// A ready task instance: its pipeline, its run's index in the pass's runs, its pk.
pub(crate) type Candidate = (Arc<Pipeline>, usize, i64);

/// What the last pass found ready and could not claim for want of slots, in claim order.
pub(crate) struct Backlog {
    runs: Vec<RunRow>,
    queue: std::collections::VecDeque<Candidate>,
    until: Instant,
}

/// Result of one pass, for the loop's sleep decision.
#[derive(Debug, Default, Clone)]
pub struct PassOutcome {
    /// Earliest data time at which something becomes due (a retry).
    pub next_due: Option<Timestamp>,
    /// Work was ready but could not be claimed now (limits, pools).
    pub blocked: bool,
    pub active_runs: usize,
    pub claimed: usize,
}

impl Engine {
    /// The runs a pass looks at: the scheduler takes a bounded window of each pipeline's
    /// queued runs (a catch-up of thousands costs a pass no more than a few); `run` and
    /// `backfill` take their own runs.
    pub(crate) fn working_runs(&self) -> Result<Vec<RunRow>, Error> {
        let runs = match &self.mode {
            Mode::Scheduler { .. } | Mode::Worker => self.store.working_runs(QUEUED_WINDOW)?,
            Mode::Runs(_) => self.store.active_runs()?,
        };
        Ok(runs.into_iter().filter(|r| self.in_scope(r)).collect())
    }

    /// Tries this engine runs at once.
    pub(crate) fn slots(&self) -> usize {
        self.opts
            .max_tasks
            .unwrap_or(self.project.settings.parallelism) as usize
    }

    /// Brings `self.tis` up to date for these runs: a run new to this engine is read whole,
    /// the others only for what changed since the last pass. Runs no longer looked at are
    /// dropped from it.
    fn read_task_instances(&mut self, runs: &[RunRow]) -> Result<(), Error> {
        let pks: HashSet<i64> = runs.iter().map(|r| r.pk).collect();
        self.tis.retain(|pk, _| pks.contains(pk));
        if self.tis.is_empty() {
            self.tis_cursor = None;
        }
        let (since, whole): (Vec<i64>, Vec<i64>) = runs
            .iter()
            .map(|r| r.pk)
            .partition(|pk| self.tis.contains_key(pk));
        let (rows, cursor) = self
            .store
            .task_instances_delta(&whole, &since, self.tis_cursor)?;
        if cursor.is_none() {
            // Without a cursor every row came: nothing kept is needed.
            self.tis.clear();
        }
        for pk in &whole {
            self.tis.insert(*pk, Default::default());
        }
        for ti in rows {
            self.tis.entry(ti.run_pk).or_default().insert(ti.pk, ti);
        }
        self.tis_cursor = cursor;
        Ok(())
    }

    pub(crate) fn in_scope(&self, run: &RunRow) -> bool {
        match &self.mode {
            Mode::Scheduler { .. } | Mode::Worker => true,
            Mode::Runs(set) => set.contains(&run.pk),
        }
    }

    /// One scheduling pass over the active runs: activate runs, decide pending tasks,
    /// finish runs, claim and start ready tries.
    pub fn pass(&mut self, now: Timestamp, may_claim: bool) -> Result<PassOutcome, Error> {
        self.backlog = None;
        let mut runs: Vec<RunRow> = self.working_runs()?;
        runs.sort_by_key(|r| (r.trigger.priority(), r.data_interval_start, r.pk));
        self.read_task_instances(&runs)?;
        // The cached rows are taken out for the pass, which reads them in place while it
        // writes and reports through `self`: a wide run's thousand rows are not copied on
        // every pass.
        let mut cache = std::mem::take(&mut self.tis);
        let res = self.pass_over(&mut runs, &mut cache, now, may_claim);
        self.tis = cache;
        res
    }

    fn pass_over(
        &mut self,
        runs: &mut [RunRow],
        cache: &mut TiCache,
        now: Timestamp,
        may_claim: bool,
    ) -> Result<PassOutcome, Error> {
        let mut out = PassOutcome {
            active_runs: runs.len(),
            ..Default::default()
        };
        let now_us = to_micros(now);
        // Ready task instances: their pipeline, their run's index in `runs`, their pk.
        let mut candidates: Vec<Candidate> = vec![];
        // Caches keyed by task instance or run keep only what is active, so memory follows
        // the active work, not the history.
        let live_runs: HashSet<i64> = runs.iter().map(|r| r.pk).collect();
        self.seen.retain(|_, (run, _)| live_runs.contains(run));
        self.deadline_seen.retain(|pk, _| live_runs.contains(pk));
        self.estimates.retain(|pk, _| live_runs.contains(pk));
        let mut full: HashSet<(String, bool)> = HashSet::new();
        for (ri, run) in runs.iter_mut().enumerate() {
            let Some(p) = self.pipeline_of_version(&run.version)? else {
                continue;
            };
            if run.status == RunState::Queued {
                // Pausing stops the scheduler from starting runs; a run asked for explicitly
                // (`run`, `backfill`) still runs.
                let paused = matches!(self.mode, Mode::Scheduler { .. } | Mode::Worker)
                    && self.paused.contains(&run.pipeline);
                if paused || !may_claim {
                    continue;
                }
                let class = (run.pipeline.clone(), run.trigger == Trigger::Backfill);
                if full.contains(&class) {
                    continue;
                }
                if !self.store.activate_run(run.pk, now_us, p.max_active_runs)? {
                    // The class is at its limit: later queued runs of it would be refused
                    // too, one write each.
                    full.insert(class);
                    continue;
                }
                run.status = RunState::Running;
                debug!(pipeline = %run.pipeline, run_id = %run.run_id, trigger = run.trigger.as_str(), "run started");
            }
            let tis = cache.entry(run.pk).or_default();
            let decisions = {
                let states: HashMap<&str, TaskState> = tis
                    .values()
                    .map(|t| (t.task_id.as_str(), t.state))
                    .collect();
                advance(&p, &states)
            };
            if !decisions.is_empty() {
                self.store.decide_pending(run.pk, &decisions, now_us)?;
                // Kept in the cache too: the next delta read brings the rows as written.
                let decided: HashMap<&str, TaskState> =
                    decisions.iter().map(|(id, s)| (id.as_str(), *s)).collect();
                for ti in tis.values_mut() {
                    if let Some(s) = decided.get(ti.task_id.as_str()) {
                        ti.state = *s;
                    }
                }
            }
            self.observe(&p, run, tis.values(), now);
            if let Some(outcome) = run_outcome(tis.values().map(|t| t.state)) {
                if self.store.finish_run(run.pk, outcome, now_us)? {
                    self.judge_finished(&p, run, now)?;
                    let rows = self.store.run(run.pk)?.map(|r| r.rows_loaded).unwrap_or(0);
                    debug!(pipeline = %run.pipeline, run_id = %run.run_id, state = %outcome, rows_loaded = rows, "run finished");
                    self.emit(Event::RunEnded {
                        pipeline: run.pipeline.clone(),
                        run_id: run.run_id.clone(),
                        ds: run.ds,
                        state: outcome,
                        rows_loaded: rows,
                        at: now,
                        trigger: run.trigger,
                        history: super::upkeep::is_history(&p, run),
                    });
                }
                continue;
            }
            for ti in tis.values() {
                match ti.state {
                    // A QUEUED task may wait for a time too (a sensor between pokes).
                    TaskState::Queued | TaskState::UpForRetry => match ti.next_try_at {
                        Some(at) if at > now_us => {
                            let at = from_micros(at);
                            out.next_due = Some(out.next_due.map_or(at, |n| n.min(at)));
                        }
                        _ => candidates.push((p.clone(), ri, ti.pk)),
                    },
                    _ => {}
                }
            }
        }
        if !may_claim {
            return Ok(out);
        }
        let row = |ri: usize, pk: i64| -> &TiRow { &cache[&runs[ri].pk][&pk] };
        // A try runs only on a host that serves its pool.
        if let Some(pools) = &self.opts.pools {
            candidates.retain(|(_, ri, pk)| {
                pools.contains(row(*ri, *pk).pool.as_deref().unwrap_or(DEFAULT_POOL))
            });
        }
        // Scheduled and manual runs first, then older intervals, then upstream tasks first.
        // Among equals (a fan-out's thousand siblings) each engine takes its own order, so
        // engines sharing a store reach for different tasks instead of all queueing for the
        // same first few and claiming nothing.
        let seed = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.owner.hash(&mut h);
            h.finish()
        };
        // A cheap mix (splitmix64's finaliser) of the engine's seed and the pk: a thousand
        // candidates per pass need no keyed hash.
        let spread = |pk: i64| {
            let mut z = seed ^ (pk as u64);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        candidates.sort_by_cached_key(|(p, ri, pk)| {
            let run = &runs[*ri];
            (
                run.trigger.priority(),
                run.data_interval_start,
                p.topo_rank(&row(*ri, *pk).task_id),
                spread(*pk),
            )
        });
        let mut rest: std::collections::VecDeque<Candidate> = candidates.into();
        self.claim_candidates(runs, cache, &mut rest, now_us, &mut out)?;
        // Ready work left for want of slots: the next slots to free are claimed from it
        // without a pass (see `claim_backlog`).
        self.backlog = (!rest.is_empty()).then(|| Backlog {
            runs: runs.to_vec(),
            queue: rest,
            until: Instant::now() + BACKLOG_FOR,
        });
        Ok(out)
    }

    /// Claims the free slots from the front of `rest`, a window at a time, one transaction
    /// per window: what other engines claimed since the pass read the runs is skipped there
    /// rather than costing a transaction each. Claims refused for a pool or task limit leave
    /// their slot to the next candidates. Returns whether a window claimed nothing.
    fn claim_candidates(
        &mut self,
        runs: &[RunRow],
        cache: &TiCache,
        rest: &mut std::collections::VecDeque<Candidate>,
        now_us: i64,
        out: &mut PassOutcome,
    ) -> Result<bool, Error> {
        let row = |ri: usize, pk: i64| -> Option<&TiRow> { cache.get(&runs[ri].pk)?.get(&pk) };
        let mut came_empty = false;
        while !rest.is_empty() {
            let free = self.slots().saturating_sub(self.running.len());
            if free == 0 {
                out.blocked = true;
                break;
            }
            let n = rest.len().min(free * 4 + 4);
            let batch: Vec<Candidate> = rest.drain(..n).collect();
            let lease_until = self.store_now() + us(self.opts.lease_ttl);
            let claims: Vec<Claim<'_>> = batch
                .iter()
                .filter_map(|(p, ri, pk)| {
                    let ti = row(*ri, *pk)?;
                    Some(Claim {
                        ti_pk: *pk,
                        owner: &self.owner,
                        host: &self.host,
                        now: now_us,
                        lease_until,
                        pool: p
                            .task(&ti.task_id)
                            .and_then(|t| t.pool.as_deref())
                            .map(|name| {
                                (
                                    name,
                                    self.project.settings.pools.get(name).copied().unwrap_or(1),
                                )
                            }),
                        pipeline_limit: (&p.name, p.max_active_tasks),
                    })
                })
                .collect();
            let results = self.store.claim_batch(&claims, free)?;
            let claimed: HashMap<i64, u32> = claims
                .iter()
                .zip(results)
                .filter_map(|(c, n)| Some((c.ti_pk, n?)))
                .collect();
            drop(claims);
            came_empty |= claimed.is_empty();
            let mut unclaimed = vec![];
            for (p, ri, pk) in batch {
                match claimed.get(&pk) {
                    Some(&try_number) => {
                        out.claimed += 1;
                        let Some(ti) = row(ri, pk).cloned() else {
                            continue;
                        };
                        self.start_try(p, runs[ri].clone(), ti, try_number)?;
                    }
                    None => {
                        out.blocked = true;
                        unclaimed.push((p, ri, pk));
                    }
                }
            }
            if self.running.len() >= self.slots() {
                // The slots ran out before the window did: its rest was not refused, only
                // not reached, and stays first in line.
                for c in unclaimed.into_iter().rev() {
                    rest.push_front(c);
                }
            }
        }
        Ok(came_empty)
    }

    /// Claims freed slots from what the last pass left ready, without a pass: under a
    /// backlog (a wide fan-out's siblings) a pass's reads find nothing new to decide, and
    /// the claim alone is one round trip where a pass is four. `None` when there is no
    /// backlog, or it is older than [`BACKLOG_FOR`], or its last window claimed nothing
    /// (its tasks went to other engines, or hit a limit): the loop then makes a pass.
    /// The claim checks each instance again (still ready, within the limits; a cancelled
    /// run's instances are no longer ready), so a stale backlog costs a refused claim,
    /// never a second try. It widens, from a pass's length to [`BACKLOG_FOR`], the window
    /// in which a run's row is older than its tasks' rows — the one every pass has.
    pub(crate) fn claim_backlog(&mut self, now: Timestamp) -> Result<Option<PassOutcome>, Error> {
        let Some(mut b) = self.backlog.take() else {
            return Ok(None);
        };
        if Instant::now() >= b.until {
            return Ok(None);
        }
        let mut out = PassOutcome {
            active_runs: b.runs.len(),
            ..Default::default()
        };
        let cache = std::mem::take(&mut self.tis);
        let res = self.claim_candidates(&b.runs, &cache, &mut b.queue, to_micros(now), &mut out);
        self.tis = cache;
        if res? {
            return Ok(None);
        }
        if !b.queue.is_empty() {
            self.backlog = Some(b);
        }
        Ok(Some(out))
    }

    /// Reports task state changes (including those made by other processes) once each.
    /// The tries of the tasks that ended are read together: one read per run and pass, not
    /// one per task (every engine observes every task of a wide run).
    pub(crate) fn observe<'t>(
        &mut self,
        p: &Pipeline,
        run: &RunRow,
        tis: impl IntoIterator<Item = &'t TiRow>,
        now: Timestamp,
    ) {
        let mut ended: Vec<&TiRow> = vec![];
        for ti in tis {
            let key = (run.pk, (ti.state, ti.try_number));
            if self.seen.get(&ti.pk) == Some(&key) {
                continue;
            }
            self.seen.insert(ti.pk, key);
            if ti.state.is_terminal() {
                ended.push(ti);
            } else if ti.state == TaskState::UpForRetry {
                self.emit(Event::TaskRetrying {
                    pipeline: run.pipeline.clone(),
                    run_id: run.run_id.clone(),
                    task_id: ti.task_id.clone(),
                    try_number: ti.try_number,
                    next_try_at: ti.next_try_at.map(from_micros).unwrap_or(now),
                });
            }
        }
        if ended.is_empty() {
            return;
        }
        // The try's duration and error, for the line people read.
        let keys: Vec<(i64, u32)> = ended.iter().map(|t| (t.pk, t.try_number)).collect();
        let mut tries: HashMap<(i64, u32), nightshift_store::TryRow> = self
            .store
            .tries_of(&keys)
            .unwrap_or_default()
            .into_iter()
            .map(|t| ((t.ti_pk, t.try_number), t))
            .collect();
        let history = super::upkeep::is_history(p, run);
        for ti in ended {
            let last = tries.remove(&(ti.pk, ti.try_number));
            self.emit(Event::TaskEnded {
                pipeline: run.pipeline.clone(),
                run_id: run.run_id.clone(),
                ti_pk: ti.pk,
                task_id: ti.task_id.clone(),
                state: ti.state,
                try_number: ti.try_number,
                at: now,
                tz: p.schedule.tz().clone(),
                duration_ms: last.as_ref().and_then(|t| t.duration_ms),
                error: last.and_then(|t| t.error),
                history,
            });
        }
    }

    pub(crate) fn start_try(
        &mut self,
        p: Arc<Pipeline>,
        run: RunRow,
        ti: TiRow,
        try_number: u32,
    ) -> Result<(), Error> {
        let ti_pk = ti.pk;
        self.next_token += 1;
        let token = self.next_token;
        let ctx = TryCtx {
            mask: crate::kinds::masker(&self.project.settings),
            own_secrets: crate::kinds::own_secret_names(&self.project.settings),
            connection_env: crate::kinds::connection_env(&self.project.settings),
            channels: self.project.settings.channels.clone(),
            connections: self.project.settings.connections.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            pipeline: p,
            run,
            ti,
            try_number,
            owner: self.owner.clone(),
            project_dir: self.project.dir.clone(),
            logs_dir: self.project.logs_dir(),
            kill_grace: self.project.settings.kill_grace,
            log_max_bytes: self.project.settings.log_max_bytes,
            dbt_artifacts_kept: self.project.settings.dbt_artifacts_kept,
            dbt_runner: self.project.settings.dbt_runner,
            crash_at: self.opts.crash_at.clone(),
            writer: self.writer()?,
            shipper: self.shipper()?,
            containment: self.containment.clone(),
            done: self.done_tx.clone(),
            token,
        };
        if let Some(stopper) = attempt::start(ctx) {
            self.running.insert(
                ti_pk,
                RunningTry {
                    stopper,
                    try_number,
                    token,
                },
            );
        }
        Ok(())
    }
}

/// For the tests below: a project of one slot whose pipeline `p` (daily) has these
/// independent tasks of `true`, its store, and a scheduling engine on a simulated clock
/// set to 2024-06-03.
#[cfg(test)]
fn one_slot(
    tasks: &[&str],
) -> (
    tempfile::TempDir,
    LoadedPipeline,
    Arc<Store>,
    Engine,
    Timestamp,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    std::fs::write(dir.path().join("nightshift.toml"), "parallelism = 1\n").unwrap();
    let mut src = "schedule = \"0 0 * * *\"\nstart_date = \"2024-06-01\"\n".to_string();
    for t in tasks {
        src += &format!("[[task]]\nid = \"{t}\"\ncommand = [\"true\"]\n");
    }
    std::fs::write(dir.path().join("pipelines/p.toml"), src).unwrap();
    let project = project::load(dir.path()).unwrap();
    let lp = project.pipelines["p"].clone();
    let store = Arc::new(Store::open(&project.store_location()).unwrap());
    let now: Timestamp = "2024-06-03T00:00:00Z".parse().unwrap();
    let engine = Engine::new(
        project,
        store.clone(),
        Arc::new(crate::SimClock::new(now)),
        Mode::Scheduler { until: None },
        Options::default(),
    );
    (dir, lp, store, engine, now)
}

#[cfg(test)]
mod backlog_tests {
    use super::*;

    /// An engine of one slot and a run of three independent tasks, after its first pass:
    /// one task claimed, two left in the backlog.
    fn engine_with_backlog() -> (tempfile::TempDir, Engine, Arc<Store>, i64, Timestamp) {
        let (dir, lp, store, mut engine, now) = one_slot(&["a", "b", "c"]);
        let interval = lp.pipeline.schedule.interval_ending_at(now).unwrap();
        let run = create_run(&store, &lp, interval, Trigger::Scheduled, now)
            .unwrap()
            .pk();
        let out = engine.pass(now, true).unwrap();
        assert_eq!(out.claimed, 1);
        assert!(out.blocked);
        (dir, engine, store, run, now)
    }

    async fn wait_for_free_slot(engine: &mut Engine) {
        while !engine.running.is_empty() {
            let d = engine.done_rx.recv().await.unwrap();
            engine.receive_done(d);
        }
    }

    fn count(store: &Store, run: i64, state: TaskState) -> usize {
        let tis = store.task_instances(run).unwrap();
        tis.iter().filter(|t| t.state == state).count()
    }

    /// A freed slot is claimed from what the pass left ready, without another pass, until
    /// the backlog is used up; then the loop is told to make a pass.
    #[tokio::test(flavor = "current_thread")]
    async fn freed_slots_are_claimed_from_the_backlog_without_a_pass() {
        let (_dir, mut engine, store, run, now) = engine_with_backlog();
        for claimed in 2..=3 {
            wait_for_free_slot(&mut engine).await;
            let out = engine
                .claim_backlog(now)
                .unwrap()
                .expect("claimed from the backlog");
            assert_eq!(out.claimed, 1);
            assert_eq!(
                count(&store, run, TaskState::Queued),
                3 - claimed,
                "one more claimed"
            );
        }
        wait_for_free_slot(&mut engine).await;
        assert!(engine.claim_backlog(now).unwrap().is_none(), "used up");
    }

    /// What another engine claimed meanwhile is skipped, not run twice; a backlog with
    /// nothing left to claim, or one too old, hands over to a pass.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stale_backlog_claims_nothing_twice_and_hands_over_to_a_pass() {
        let (_dir, mut engine, store, run, now) = engine_with_backlog();
        wait_for_free_slot(&mut engine).await;
        for ti in store.task_instances(run).unwrap() {
            if ti.state == TaskState::Queued {
                let other = Claim {
                    ti_pk: ti.pk,
                    owner: "another engine",
                    host: "elsewhere",
                    now: to_micros(now),
                    lease_until: to_micros(now) + 60_000_000,
                    pool: None,
                    pipeline_limit: ("p", 16),
                };
                assert_eq!(store.claim(&other).unwrap(), Some(1));
            }
        }
        assert!(engine.claim_backlog(now).unwrap().is_none());
        assert!(engine.running.is_empty(), "nothing claimed twice");
        let tries = store.tries(run).unwrap();
        assert_eq!(tries.len(), 3, "one try per task: {tries:?}");

        let (_dir, mut engine, _store, _run, now) = engine_with_backlog();
        wait_for_free_slot(&mut engine).await;
        engine.backlog.as_mut().unwrap().until = Instant::now();
        assert!(engine.claim_backlog(now).unwrap().is_none(), "too old");
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;

    /// With one free slot, a scheduled run's task is claimed before an older backfill's.
    #[tokio::test(flavor = "current_thread")]
    async fn backfill_work_yields_to_scheduled_runs() {
        let (_dir, lp, store, mut engine, now) = one_slot(&["a"]);
        let older = lp
            .pipeline
            .schedule
            .interval_ending_at("2024-06-02T00:00:00Z".parse().unwrap())
            .unwrap();
        let newer = lp.pipeline.schedule.interval_ending_at(now).unwrap();
        let backfill = create_run(&store, &lp, older, Trigger::Backfill, now)
            .unwrap()
            .pk();
        let scheduled = create_run(&store, &lp, newer, Trigger::Scheduled, now)
            .unwrap()
            .pk();
        let out = engine.pass(now, true).unwrap();
        assert_eq!(out.claimed, 1);
        assert!(out.blocked);
        assert_eq!(
            store.task_instances(scheduled).unwrap()[0].state,
            TaskState::Running
        );
        assert_eq!(
            store.task_instances(backfill).unwrap()[0].state,
            TaskState::Queued
        );
    }
}
