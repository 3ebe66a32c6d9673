//! Upkeep beside the runs: deadlines (judged and forecast each iteration) and retention.

use super::*;

/// Whether a run is history: not the one run its deadline is judged for (a backfill, or a
/// run of an earlier interval than the latest when it was created).
pub(crate) fn is_history(p: &Pipeline, run: &RunRow) -> bool {
    let iv = DataInterval {
        start: from_micros(run.data_interval_start),
        end: from_micros(run.data_interval_end),
    };
    !deadline::judged(p, run.trigger, &iv, from_micros(run.queued_at))
}

impl Engine {
    /// A finished run met its deadline or missed it.
    pub(crate) fn judge_finished(
        &mut self,
        p: &Pipeline,
        run: &RunRow,
        now: Timestamp,
    ) -> Result<(), Error> {
        if is_history(p, run) {
            return Ok(());
        }
        let iv = DataInterval {
            start: from_micros(run.data_interval_start),
            end: from_micros(run.data_interval_end),
        };
        if let Some(d) = deadline::deadline_for(p, &iv) {
            let state = if now <= d {
                DeadlineState::Met
            } else {
                DeadlineState::Missed
            };
            if self
                .store
                .set_deadline(run.pk, to_micros(d), state.as_str(), None)?
                && state == DeadlineState::Missed
            {
                self.emit_deadline(run, state, d, None, now);
            }
        }
        Ok(())
    }

    pub(crate) fn emit_deadline(
        &self,
        run: &RunRow,
        state: DeadlineState,
        d: Timestamp,
        forecast: Option<Timestamp>,
        now: Timestamp,
    ) {
        match state {
            DeadlineState::AtRisk => {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, deadline = %d, forecast = ?forecast, "deadline at risk")
            }
            DeadlineState::Missed => {
                warn!(pipeline = %run.pipeline, run_id = %run.run_id, deadline = %d, "deadline missed")
            }
            _ => {}
        }
        self.emit(Event::Deadline {
            pipeline: run.pipeline.clone(),
            run_id: run.run_id.clone(),
            ds: run.ds,
            state,
            deadline: d,
            forecast,
            at: now,
        });
    }

    /// Judges every unfinished run of a pipeline with a deadline: missed once the deadline
    /// passed, at risk when the forecast from the remaining critical path passes it.
    /// Returns the next deadline still ahead, so the loop wakes for it.
    pub(crate) fn check_deadlines(&mut self, now: Timestamp) -> Result<Option<Timestamp>, Error> {
        let mut next: Option<Timestamp> = None;
        for run in self.working_runs()? {
            let Some(p) = self.pipeline_of_version(&run.version)? else {
                continue;
            };
            let iv = DataInterval {
                start: from_micros(run.data_interval_start),
                end: from_micros(run.data_interval_end),
            };
            if !deadline::judged(&p, run.trigger, &iv, from_micros(run.queued_at)) {
                continue;
            }
            let Some(d) = deadline::deadline_for(&p, &iv) else {
                continue;
            };
            if !self.estimates.contains_key(&run.pk) {
                let est: HashMap<String, i64> = self
                    .store
                    .recent_durations(&p.name, run.data_interval_start, 10)?
                    .into_iter()
                    .filter_map(|(t, xs)| deadline::median(xs).map(|m| (t, m)))
                    .collect();
                self.estimates.insert(run.pk, est);
            }
            let est = &self.estimates[&run.pk];
            let tis = self.store.task_instances(run.pk)?;
            let tries = if tis.iter().any(|t| t.state == TaskState::Running) {
                self.store.tries(run.pk)?
            } else {
                vec![]
            };
            let now_us = to_micros(now);
            let progress: HashMap<String, TaskProgress> = tis
                .iter()
                .map(|ti| {
                    let running_ms = (ti.state == TaskState::Running)
                        .then(|| {
                            tries
                                .iter()
                                .find(|t| t.ti_pk == ti.pk && t.try_number == ti.try_number)
                                .map(|t| (now_us - t.start_time) / 1000)
                        })
                        .flatten();
                    (
                        ti.task_id.clone(),
                        TaskProgress {
                            state: Some(ti.state),
                            running_ms,
                            estimate_ms: est.get(&ti.task_id).copied(),
                        },
                    )
                })
                .collect();
            let remaining = deadline::forecast_remaining_ms(&p, &progress);
            let state = deadline::judge(now, d, remaining);
            let forecast = remaining.map(|ms| plus(now, Duration::from_millis(ms as u64)));
            if self.deadline_seen.get(&run.pk) != Some(&state) {
                self.deadline_seen.insert(run.pk, state);
                let changed = self.store.set_deadline(
                    run.pk,
                    to_micros(d),
                    state.as_str(),
                    forecast.map(to_micros),
                )?;
                if changed && matches!(state, DeadlineState::AtRisk | DeadlineState::Missed) {
                    self.emit_deadline(&run, state, d, forecast, now);
                }
            }
            if d > now {
                next = Some(next.map_or(d, |n: Timestamp| n.min(d)));
            }
        }
        Ok(next)
    }

    /// Retention: removes finished runs older than the project's `max_age`, their history
    /// and their log files. At most every ten minutes, by the scheduler only.
    pub(crate) fn prune_if_due(&mut self) -> Result<(), Error> {
        let Some(max_age) = self.project.settings.retention else {
            return Ok(());
        };
        if !self.holds_scheduler_lease
            || self
                .last_prune
                .is_some_and(|t| t.elapsed() < Duration::from_secs(600))
        {
            return Ok(());
        }
        self.last_prune = Some(Instant::now());
        let cutoff = to_micros(self.clock.now()) - us(max_age);
        let pruned = self.store.prune(cutoff, 500)?;
        if pruned.runs == 0 {
            return Ok(());
        }
        let logs = self.project.logs_dir();
        let logs = logs.canonicalize().unwrap_or(logs);
        let mut dirs = HashSet::new();
        let dbt_root = self.project.dir.join(".nightshift/dbt");
        for path in &pruned.log_paths {
            let path = project::resolve_stored(&self.project.dir, path);
            let path = path.as_path();
            // The run's dbt target folders go with it: a log lies at
            // `<logs>/<pipeline>/<run_id>/<task>.try-<n>.log`, its artifacts under
            // `.nightshift/dbt/<pipeline>/<run_id>/`.
            if let Ok(rel) = path.strip_prefix(self.project.logs_dir())
                && let [pipeline, run_id, _] = rel.components().collect::<Vec<_>>()[..]
            {
                let _ = std::fs::remove_dir_all(dbt_root.join(pipeline).join(run_id));
            }
            // Only files under the project's log folder: a store edited by hand cannot make
            // retention delete anything else.
            if let Some(real) = project::inside(&logs, path) {
                let _ = std::fs::remove_file(&real);
                if let Some(d) = real.parent() {
                    dirs.insert(d.to_path_buf());
                }
            }
        }
        for d in dirs {
            let mut d = Some(d.as_path());
            while let Some(dir) = d.filter(|x| x.starts_with(&logs) && *x != logs) {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
                d = dir.parent();
            }
        }
        info!(
            runs = pruned.runs,
            tries = pruned.tries,
            "retention removed old runs"
        );
        Ok(())
    }
}
