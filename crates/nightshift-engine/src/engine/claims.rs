//! One pass over the working set: activating runs, deciding pending tasks, finishing
//! runs, and claiming and starting ready tries.

use super::*;

/// Queued runs per pipeline and class a scheduler pass considers (oldest first).
pub(crate) const QUEUED_WINDOW: u32 = 64;

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
        let mut candidates: Vec<(Arc<Pipeline>, usize, i64)> = vec![];
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
        // Claim the free slots from a window of the candidates, one transaction per window:
        // what other engines claimed since this pass read the runs is skipped there rather
        // than costing a transaction each. Claims refused for a pool or task limit leave their
        // slot to the next candidates.
        let mut rest = candidates.into_iter().peekable();
        loop {
            let free = self.slots().saturating_sub(self.running.len());
            if rest.peek().is_none() {
                break;
            }
            if free == 0 {
                out.blocked = true;
                break;
            }
            let batch: Vec<(Arc<Pipeline>, usize, i64)> =
                rest.by_ref().take(free * 4 + 4).collect();
            let lease_until = self.store_now() + us(self.opts.lease_ttl);
            let claims: Vec<Claim<'_>> = batch
                .iter()
                .map(|(p, ri, pk)| Claim {
                    ti_pk: *pk,
                    owner: &self.owner,
                    host: &self.host,
                    now: now_us,
                    lease_until,
                    pool: p
                        .task(&row(*ri, *pk).task_id)
                        .and_then(|t| t.pool.as_deref())
                        .map(|name| {
                            (
                                name,
                                self.project.settings.pools.get(name).copied().unwrap_or(1),
                            )
                        }),
                    pipeline_limit: (&p.name, p.max_active_tasks),
                })
                .collect();
            let results = self.store.claim_batch(&claims, free)?;
            drop(claims);
            for ((p, ri, pk), claimed) in batch.into_iter().zip(results) {
                match claimed {
                    Some(try_number) => {
                        out.claimed += 1;
                        let ti = row(ri, pk).clone();
                        self.start_try(p, runs[ri].clone(), ti, try_number)?;
                    }
                    None => out.blocked = true,
                }
            }
        }
        Ok(out)
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

#[cfg(test)]
mod priority_tests {
    use super::*;
    use crate::SimClock;

    /// With one free slot, a scheduled run's task is claimed before an older backfill's.
    #[tokio::test(flavor = "current_thread")]
    async fn backfill_work_yields_to_scheduled_runs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        std::fs::write(dir.path().join("nightshift.toml"), "parallelism = 1\n").unwrap();
        std::fs::write(
            dir.path().join("pipelines/p.toml"),
            "schedule = \"0 0 * * *\"\nstart_date = \"2024-06-01\"\n[[task]]\nid = \"a\"\ncommand = [\"true\"]\n",
        )
        .unwrap();
        let project = project::load(dir.path()).unwrap();
        let lp = project.pipelines["p"].clone();
        let store = Arc::new(Store::open(&project.store_location()).unwrap());
        let now: Timestamp = "2024-06-03T00:00:00Z".parse().unwrap();
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
        let mut engine = Engine::new(
            project,
            store.clone(),
            Arc::new(SimClock::new(now)),
            Mode::Scheduler { until: None },
            Options::default(),
        );
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
