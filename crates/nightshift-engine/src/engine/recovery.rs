//! Leases and recovery: the scheduler lease, the heartbeat that renews try leases and
//! stops tries whose claim is gone (cancelled, taken over), and orphaned tries of dead
//! engines.

use super::*;

impl Engine {
    /// Takes the scheduler role (creating runs, catch-up, deadlines, retention): one holder
    /// per store at a time. Fails with [`Error::SchedulerRunning`] when a live process holds
    /// it; on a shared store the caller may go on without it: the engine takes the role at a
    /// heartbeat once its holder's lease has run out.
    pub fn acquire_scheduler_lease(&mut self) -> Result<(), Error> {
        let now = self.sync_store_clock()?;
        match self.try_take_role(now)? {
            None => Ok(()),
            Some(holder) => Err(Error::SchedulerRunning {
                pid: holder.pid,
                host: holder.host,
                ago: (now - holder.heartbeat_at) / 1_000_000,
                expires: ((holder.expires_at - now) / 1_000_000).max(0),
            }),
        }
    }

    /// Takes the role if it is free, expired, already ours, or held by a process on this
    /// machine that is gone (it cannot renew: no need to wait for its lease to end). Returns
    /// the live holder otherwise.
    fn try_take_role(&mut self, now: i64) -> Result<Option<nightshift_store::LeaseHolder>, Error> {
        let me = Owner::me();
        let ttl = us(self.opts.role_ttl);
        let mut holder =
            self.store
                .acquire_scheduler_lease(&self.owner, &me.host, me.pid, now, ttl)?;
        if let Some(h) = &holder
            && Owner::parse(&h.owner).is_some_and(|o| o.is_dead_here())
        {
            warn!(owner = %h.owner, "previous scheduler is gone; taking over its lease");
            self.store.break_scheduler_lease(&h.owner)?;
            holder = self
                .store
                .acquire_scheduler_lease(&self.owner, &me.host, me.pid, now, ttl)?;
        }
        if holder.is_none() {
            self.holds_scheduler_lease = true;
            self.role_renewed = Some(Instant::now());
        }
        Ok(holder)
    }

    /// Reads the store's clock, and remembers how far it is from this host's, so leases in
    /// between (claims, orphan checks) are measured without asking the store again.
    pub(crate) fn sync_store_clock(&mut self) -> Result<i64, Error> {
        let now = self.store.now_us()?;
        self.store_clock_offset = now - real_now_us();
        Ok(now)
    }

    /// The store's clock, from this host's and the offset of the last heartbeat.
    pub(crate) fn store_now(&self) -> i64 {
        real_now_us() + self.store_clock_offset
    }

    /// Whether this engine schedules now: it is an `up`, holds the role, and renewed it
    /// within `role_ttl` by its own monotonic clock (a holder cut off from the store, or
    /// frozen, stops scheduling before a standby can take over; run creation is idempotent
    /// anyway, so a brief overlap could not duplicate a run).
    pub(crate) fn schedules(&self) -> bool {
        matches!(self.mode, Mode::Scheduler { .. })
            && self.holds_scheduler_lease
            && self
                .role_renewed
                .is_some_and(|t| t.elapsed() < self.opts.role_ttl)
    }

    /// Tells the store this process is alive and what it does (for `status` and the UI).
    pub(crate) fn beat(&mut self, now: i64) -> Result<(), Error> {
        let role = match self.mode {
            Mode::Scheduler { .. } if self.schedules() => "scheduler",
            Mode::Scheduler { .. } => "standby",
            Mode::Worker => "worker",
            Mode::Runs(_) => "run",
        };
        let pools = self.opts.pools.as_ref().map(|p| {
            let mut v: Vec<&str> = p.iter().map(String::as_str).collect();
            v.sort_unstable();
            v.join(",")
        });
        let me = Owner::me();
        self.store.beat(&nightshift_store::EngineRow {
            owner: self.owner.clone(),
            host: me.host,
            pid: i64::from(me.pid),
            role: role.to_owned(),
            pools,
            started_at: *self.started_at.get_or_insert(now),
            heartbeat_at: now,
            running: 0,
        })?;
        Ok(())
    }

    /// Renews the role if held, or takes it when its holder's lease ran out.
    fn keep_or_take_role(&mut self, now: i64) -> Result<(), Error> {
        if !matches!(self.mode, Mode::Scheduler { .. }) {
            return Ok(());
        }
        let ttl = us(self.opts.role_ttl);
        if self.holds_scheduler_lease {
            if self.store.renew_scheduler_lease(&self.owner, now, ttl)? {
                self.role_renewed = Some(Instant::now());
                return Ok(());
            }
            self.holds_scheduler_lease = false;
            self.role_renewed = None;
            let holder = self.store.scheduler_lease()?;
            warn!(
                holder = holder.as_ref().map_or("nobody", |h| h.owner.as_str()),
                "this process lost the scheduler role (it could not renew in time); it executes tries and stands by"
            );
            return Ok(());
        }
        if self.try_take_role(now)?.is_none() {
            info!("took over the scheduler role");
        }
        Ok(())
    }

    /// Renews leases, stops tries that lost their claim, and recovers orphans.
    pub(crate) fn heartbeat(&mut self) -> Result<(), Error> {
        // Leases are measured with the store's clock, shared by every host.
        let real = self.sync_store_clock()?;
        let owned: HashSet<(i64, u32)> = self
            .store
            .renew_leases(&self.owner, real + us(self.opts.lease_ttl))?
            .into_iter()
            .collect();
        while let Ok(d) = self.done_rx.try_recv() {
            self.forget_try(d);
        }
        for (ti, rt) in &self.running {
            if owned.contains(&(*ti, rt.try_number)) {
                continue;
            }
            // Not RUNNING any more: its run was cancelled, or another engine took it over. (A
            // try that ended a moment ago is not RUNNING either: its supervisor is gone and
            // refuses the stop.)
            let cancelled = self.store.task_state(*ti)? == Some(TaskState::Cancelled);
            let reason = if cancelled {
                KillReason::Cancelled
            } else {
                KillReason::LostClaim
            };
            if rt.stopper.stop(reason) {
                if cancelled {
                    info!(
                        ti,
                        try_number = rt.try_number,
                        "run cancelled; stopping the try"
                    );
                } else {
                    warn!(
                        ti,
                        try_number = rt.try_number,
                        "try lost its claim; stopping its process"
                    );
                }
            }
        }
        self.keep_or_take_role(real)?;
        self.beat(real)?;
        self.paused = self.store.paused_pipelines()?.into_iter().collect();
        self.recover_orphans()?;
        self.prune_if_due()
    }

    /// Finds RUNNING tries whose engine is gone (dead process on this host, or an expired
    /// lease), makes sure no process of theirs survives, and fails or retries them per policy.
    pub fn recover_orphans(&mut self) -> Result<(), Error> {
        let real = self.store_now();
        let writer = self.writer()?;
        for ti in self.store.running_task_instances()? {
            // A try still running here, or one whose outcome waits for the writer, is no
            // orphan whatever the store says.
            if self.running.contains_key(&ti.pk) || writer.is_pending(ti.pk) {
                continue;
            }
            let owner_text = ti.owner.clone().unwrap_or_default();
            let mine = owner_text == self.owner;
            let owner = Owner::parse(&owner_text);
            let judge_leases = self
                .store_ok_since
                .is_some_and(|t| t.elapsed() >= self.opts.lease_ttl);
            let dead = mine
                || owner.as_ref().is_some_and(Owner::is_dead_here)
                || (judge_leases && ti.lease_until.is_none_or(|l| l < real));
            if !dead {
                continue;
            }
            if ti.host.as_deref() == Some(self.host.as_str())
                && let Some(pid) = ti
                    .pid
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p > 1)
            {
                let start = ti.pid_start.map(|s| s as u64);
                if procs::alive(pid, start) || procs::group_alive(pid) {
                    warn!(task = %ti.task_id, pid, "killing the process group of an orphaned try");
                    procs::kill_group_blocking(pid, self.project.settings.kill_grace);
                }
            }
            if ti.host.as_deref() == Some(self.host.as_str()) {
                // Processes of the try whose pid was not recorded yet (it had just started).
                let key = try_key(&self.store, ti.pk, ti.try_number);
                if !procs::kill_by_env("NIGHTSHIFT_TRY_KEY", &key, self.project.settings.kill_grace)
                    .is_empty()
                {
                    warn!(task = %ti.task_id, "killed the processes of an orphaned try found by its key");
                }
            }
            let now = self.clock.now();
            // The scheduler's death is not the task's failure: the try is given back, unless
            // the task keeps being interrupted.
            let (ti_state, next_try_at, extra_tries) =
                attempt::after_interruption(&ti, to_micros(now));
            let retry = (ti_state, next_try_at);
            let who = owner
                .map(|o| format!("pid {} on `{}`", o.pid, o.host))
                .unwrap_or_else(|| "unknown".into());
            let mut msg = format!(
                "interrupted: the scheduler running this try ({who}) stopped; the try's processes were killed"
            );
            if ti_state == TaskState::Failed {
                msg = format!(
                    "interrupted {} times in a row; last: {msg}",
                    ti.interruptions + 1
                );
            }
            let written = self.store.finish_try(&FinishTry {
                ti_pk: ti.pk,
                try_number: ti.try_number,
                owner: ti.owner.clone(),
                end: to_micros(now),
                try_state: TaskState::Failed,
                ti_state: retry.0,
                next_try_at: retry.1,
                exit_code: None,
                signal: None,
                error: Some(msg),
                metrics: None,
                rows_loaded: None,
                extra_tries,
                log_path: None,
                pid: None,
                interrupted: true,
                warning: None,
            })?;
            if written {
                warn!(pipeline = %ti.pipeline, task = %ti.task_id, try_number = ti.try_number, next = %retry.0, "recovered an orphaned try");
            }
        }
        Ok(())
    }
}
