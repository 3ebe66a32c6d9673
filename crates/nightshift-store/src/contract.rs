//! The store's contract, tested through the interface: what every backend must do. Each
//! test is written once and run on every backend built in (`contract!` at the end): SQLite
//! in a temporary file, PostgreSQL in a private cluster started for the test.

use super::*;

/// A store under test, and what keeps it alive (its folder, its server).
struct Fixture {
    store: Store,
    _keep: Box<dyn std::any::Any>,
}

impl std::ops::Deref for Fixture {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl Fixture {
    /// A second, independent connection to the same store (another process's view).
    fn reopen(&self) -> Store {
        Store::open(self.store.location()).unwrap()
    }
}

fn sqlite_store() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_file(&dir.path().join(".nightshift/nightshift.db")).unwrap();
    Fixture {
        store,
        _keep: Box::new(dir),
    }
}

#[cfg(feature = "postgres")]
fn postgres_store() -> Fixture {
    let cluster = postgres::testing::TestCluster::start().unwrap();
    let url = cluster.database("contract").unwrap();
    let store = Store::open(&Location::Postgres(PgLocation {
        url,
        password_env: None,
    }))
    .unwrap();
    Fixture {
        store,
        _keep: Box::new(cluster),
    }
}

/// Generates, for each contract test `f(&Fixture)`, one `#[test]` per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[test]
            fn $name() {
                super::$name(&super::sqlite_store());
            })*
        }
        #[cfg(feature = "postgres")]
        mod on_postgres {
            $(#[test]
            fn $name() {
                super::$name(&super::postgres_store());
            })*
        }
    };
}

contract!(
    one_run_per_interval,
    cancelling_a_run_records_its_running_try_and_fences_its_outcome,
    claims_are_fenced,
    pool_slots_are_shared,
    scheduler_lease_is_exclusive,
    catch_up_skips_taken_intervals_and_pages_read_history,
    run_concurrency_and_outcomes,
    sensors_give_back_their_try,
    rerun_clear_and_mark,
    deadlines_alerts_and_flags,
    retention_removes_whole_runs,
    concurrent_claimers_never_share_a_try_or_overfill_a_pool,
    a_batch_takes_at_most_its_free_slots_in_order,
    max_active_tasks_holds_across_claimers_and_a_pool_refusal_takes_no_slot,
    a_batch_of_outcomes_is_fenced_try_by_try,
    a_delta_read_brings_every_change_since_its_cursor,
    the_store_clock_moves,
    a_newer_schema_is_refused,
    engines_are_listed_with_their_running_tries,
    shipped_logs_read_back_from_any_offset,
    the_audit_log_keeps_every_entry_newest_first,
);

fn the_audit_log_keeps_every_entry_newest_first(s: &Fixture) {
    let entry = |n: i64, action: &str| AuditRow {
        id: 0,
        at: n,
        actor: "ci".into(),
        action: action.into(),
        target: format!("nightly/{n}"),
        client: "127.0.0.1".into(),
        outcome: "ok".into(),
    };
    let a = s.record_audit(&entry(1, "trigger")).unwrap();
    let b = s.record_audit(&entry(2, "backfill")).unwrap();
    assert!(b > a);
    let all = s.audit(None, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0],
        AuditRow {
            id: b,
            ..entry(2, "backfill")
        }
    );
    assert_eq!(
        s.audit(Some(b), 10).unwrap()[0].id,
        a,
        "a page before an id"
    );
    assert_eq!(s.audit(None, 1).unwrap().len(), 1);
}

fn new_run<'a>(run_id: &'a str, start: i64, version: &'a str) -> NewRun<'a> {
    NewRun {
        run_id,
        pipeline: "nightly",
        ds: jiff::civil::date(2024, 6, 1),
        data_interval_start: start,
        data_interval_end: start + 1,
        now: 0,
        trigger: Trigger::Scheduled,
        version,
    }
}

fn task<'a>(task_id: &'a str, pool: Option<&'static str>) -> NewTask<'a> {
    NewTask {
        task_id,
        max_tries: 2,
        pool,
    }
}

fn claim_of(ti_pk: i64, owner: &str, now: i64) -> Claim<'_> {
    Claim {
        ti_pk,
        owner,
        host: "h",
        now,
        lease_until: now + 100,
        pool: None,
        pipeline_limit: ("nightly", 16),
    }
}

fn finish(ti_pk: i64, try_number: u32, owner: &str, end: i64, state: TaskState) -> FinishTry {
    FinishTry {
        ti_pk,
        try_number,
        owner: Some(owner.into()),
        end,
        try_state: state,
        ti_state: state,
        next_try_at: None,
        exit_code: Some(0),
        signal: None,
        error: None,
        metrics: Some("{\"rows\":3}".into()),
        rows_loaded: Some(3),
        extra_tries: 0,
        log_path: Some("logs/x.log".into()),
        pid: Some(42),
        interrupted: false,
        warning: None,
    }
}

/// The states of a run's task instances, in order.
fn states_of(s: &Fixture, run: i64) -> Vec<TaskState> {
    s.task_instances(run)
        .unwrap()
        .iter()
        .map(|t| t.state)
        .collect()
}

/// A run of these tasks, all QUEUED: its pk and its task instances' pks, in order.
fn queued_run(s: &Fixture, ids: &[String], pool: Option<&'static str>) -> (i64, Vec<i64>) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let tasks: Vec<NewTask<'_>> = ids.iter().map(|t| task(t, pool)).collect();
    let run = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
    let decisions: Vec<(String, TaskState)> =
        ids.iter().map(|t| (t.clone(), TaskState::Queued)).collect();
    s.decide_pending(run, &decisions, 1).unwrap();
    let tis = s
        .task_instances(run)
        .unwrap()
        .iter()
        .map(|t| t.pk)
        .collect();
    (run, tis)
}

fn one_run_per_interval(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let tasks = [NewTask {
        task_id: "a",
        max_tries: 1,
        pool: None,
    }];
    let a = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap();
    let b = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap();
    let c = s
        .create_run(&new_run("r1-other-id", 10, &v), &tasks)
        .unwrap();
    assert!(matches!(a, Created::New(_)));
    assert_eq!(b, Created::Existing(a.pk()));
    assert_eq!(c, Created::Existing(a.pk()));
    assert_eq!(s.count("pipeline_runs").unwrap(), 1);
    assert_eq!(s.count("task_instances").unwrap(), 1);
    // A second connection (another process) sees the same constraint.
    let s2 = s.reopen();
    assert!(matches!(
        s2.create_run(&new_run("r1", 10, &v), &tasks).unwrap(),
        Created::Existing(_)
    ));
}

fn cancelling_a_run_records_its_running_try_and_fences_its_outcome(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let tasks = [
        NewTask {
            task_id: "a",
            max_tries: 1,
            pool: None,
        },
        NewTask {
            task_id: "b",
            max_tries: 1,
            pool: None,
        },
    ];
    let run = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
    s.decide_pending(run, &[("a".into(), TaskState::Queued)], 1)
        .unwrap();
    let a = s.task_instances(run).unwrap()[0].pk;
    let claim = Claim {
        ti_pk: a,
        owner: "A",
        host: "h",
        now: 5,
        lease_until: 100,
        pool: None,
        pipeline_limit: ("nightly", 16),
    };
    assert_eq!(s.claim(&claim).unwrap(), Some(1));
    let (runs, tries) = s.cancel_runs(&[run], 7, "test").unwrap();
    assert_eq!(runs, ["r1"]);
    assert_eq!(tries.len(), 1);
    assert_eq!(tries[0].task_id, "a");
    let states = states_of(s, run);
    assert_eq!(states, [TaskState::Cancelled, TaskState::Cancelled]);
    assert_eq!(s.run(run).unwrap().unwrap().status, RunState::Cancelled);
    let t = &s.tries(run).unwrap()[0];
    assert_eq!(t.state, TaskState::Cancelled);
    assert_eq!(t.error.as_deref(), Some("cancelled: test"));
    // The engine's outcome for the killed try is fenced out.
    let fin = FinishTry {
        ti_pk: a,
        try_number: 1,
        owner: Some("A".into()),
        end: 9,
        try_state: TaskState::Failed,
        ti_state: TaskState::UpForRetry,
        next_try_at: Some(9),
        exit_code: None,
        signal: Some(9),
        error: None,
        metrics: None,
        rows_loaded: None,
        extra_tries: 1,
        log_path: None,
        pid: None,
        interrupted: true,
        warning: None,
    };
    assert!(!s.finish_try(&fin).unwrap());
    assert_eq!(s.task_state(a).unwrap(), Some(TaskState::Cancelled));
    assert_eq!(s.cancel_runs(&[run], 8, "again").unwrap().0.len(), 0);
    assert!(
        s.reset_run(run, 9, Trigger::Manual, &v, &tasks).unwrap(),
        "a cancelled run can run again"
    );
}

fn claims_are_fenced(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let run = s
        .create_run(
            &new_run("r1", 10, &v),
            &[NewTask {
                task_id: "a",
                max_tries: 3,
                pool: Some("p"),
            }],
        )
        .unwrap()
        .pk();
    let ti = s.task_instances(run).unwrap()[0].pk;
    let claim = |owner: &'static str| Claim {
        ti_pk: ti,
        owner,
        host: "h",
        now: 5,
        lease_until: 100,
        pool: Some(("p", 1)),
        pipeline_limit: ("nightly", 16),
    };
    assert_eq!(
        s.claim(&claim("A")).unwrap(),
        None,
        "PENDING is not claimable"
    );
    s.decide_pending(run, &[("a".into(), TaskState::Queued)], 1)
        .unwrap();
    assert_eq!(s.claim(&claim("A")).unwrap(), Some(1));
    assert_eq!(s.claim(&claim("B")).unwrap(), None, "already running");
    let fin = |owner: &'static str, try_number| FinishTry {
        ti_pk: ti,
        try_number,
        owner: Some(owner.into()),
        end: 9,
        try_state: TaskState::Failed,
        ti_state: TaskState::UpForRetry,
        next_try_at: Some(9),
        exit_code: Some(1),
        signal: None,
        error: None,
        metrics: None,
        rows_loaded: None,
        extra_tries: 0,
        log_path: None,
        pid: None,
        interrupted: false,
        warning: None,
    };
    assert!(!s.finish_try(&fin("B", 1)).unwrap(), "wrong owner");
    assert!(s.finish_try(&fin("A", 1)).unwrap());
    assert!(!s.finish_try(&fin("A", 1)).unwrap(), "already finished");
    assert_eq!(
        s.claim(&Claim {
            now: 10,
            ..claim("B")
        })
        .unwrap(),
        Some(2)
    );
    assert!(
        !s.record_spawn(ti, 1, "A", 1, None, "x").unwrap(),
        "stale try cannot write"
    );
    assert!(s.record_spawn(ti, 2, "B", 1, None, "x").unwrap());
    assert_eq!(s.renew_leases("A", 200).unwrap(), vec![]);
    assert_eq!(s.renew_leases("B", 200).unwrap(), vec![(ti, 2)]);
    assert_eq!(s.tries(run).unwrap().len(), 2);
}

fn pool_slots_are_shared(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let tasks = [
        NewTask {
            task_id: "a",
            max_tries: 1,
            pool: Some("p"),
        },
        NewTask {
            task_id: "b",
            max_tries: 1,
            pool: Some("p"),
        },
    ];
    let run = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
    s.decide_pending(
        run,
        &[
            ("a".into(), TaskState::Queued),
            ("b".into(), TaskState::Queued),
        ],
        1,
    )
    .unwrap();
    let tis = s.task_instances(run).unwrap();
    let claim = |ti: i64| Claim {
        ti_pk: ti,
        owner: "A",
        host: "h",
        now: 5,
        lease_until: 100,
        pool: Some(("p", 1)),
        pipeline_limit: ("nightly", 16),
    };
    assert_eq!(s.claim(&claim(tis[0].pk)).unwrap(), Some(1));
    assert_eq!(s.claim(&claim(tis[1].pk)).unwrap(), None);
}

fn scheduler_lease_is_exclusive(s: &Fixture) {
    assert_eq!(s.acquire_scheduler_lease("A", "h", 1, 0, 10).unwrap(), None);
    assert_eq!(
        s.acquire_scheduler_lease("B", "h", 2, 5, 10)
            .unwrap()
            .unwrap()
            .owner,
        "A"
    );
    assert!(s.renew_scheduler_lease("A", 6, 10).unwrap());
    assert_eq!(
        s.acquire_scheduler_lease("B", "h", 2, 17, 10).unwrap(),
        None,
        "expired lease is taken over"
    );
    assert!(!s.renew_scheduler_lease("A", 18, 10).unwrap());
}

fn catch_up_skips_taken_intervals_and_pages_read_history(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    assert_eq!(
        s.version_source(&v).unwrap(),
        Some(("nightly".into(), "src".into()))
    );
    let tasks = [task("a", None), task("b", Some("p"))];
    let first = s.create_run(&new_run("c10", 10, &v), &tasks).unwrap().pk();
    let created = s
        .create_runs(
            &[
                new_run("x10", 10, &v),
                new_run("c20", 20, &v),
                new_run("c30", 30, &v),
            ],
            &tasks,
        )
        .unwrap();
    assert_eq!(created.len(), 2, "the taken interval is skipped");
    assert_eq!(s.count("pipeline_runs").unwrap(), 3);
    assert_eq!(s.count("task_instances").unwrap(), 6);
    let starts =
        |runs: Vec<RunRow>| -> Vec<i64> { runs.iter().map(|r| r.data_interval_start).collect() };
    assert_eq!(starts(s.runs("nightly", 2).unwrap()), [20, 30]);
    let all = RunFilter::default();
    assert_eq!(
        starts(s.runs_page("nightly", None, 2, all).unwrap()),
        [30, 20]
    );
    assert_eq!(
        starts(s.runs_page("nightly", Some(20), 9, all).unwrap()),
        [10]
    );
    assert_eq!(starts(s.runs_between("nightly", 15, 31).unwrap()), [20, 30]);
    assert_eq!(s.latest_interval_start("nightly", None).unwrap(), Some(30));
    assert_eq!(
        s.latest_interval_start("nightly", Some(Trigger::Backfill))
            .unwrap(),
        None
    );
    assert_eq!(s.latest_interval_start("other", None).unwrap(), None);
    let r = s.find_run("nightly", "c20").unwrap().unwrap();
    assert_eq!(r.ds, jiff::civil::date(2024, 6, 1));
    assert_eq!(r.status, RunState::Queued);
    assert_eq!(r.trigger, Trigger::Scheduled);
    assert_eq!(
        s.find_run_by_interval("nightly", 20).unwrap(),
        Some(r.clone())
    );
    assert_eq!(s.run(r.pk).unwrap(), Some(r));
    assert_eq!(s.runs_with_id("c10").unwrap().len(), 1);
    assert_eq!(s.active_runs().unwrap().len(), 3);
    assert_eq!(
        starts(s.working_runs(1).unwrap()),
        [10],
        "one queued run per pipeline and class"
    );
    let (last, finished) = s.last_runs("nightly").unwrap();
    assert_eq!(last.unwrap().data_interval_start, 30);
    assert!(finished.is_none());
    let all: Vec<i64> = created.iter().copied().chain([first]).collect();
    assert_eq!(s.task_instances_of(&all).unwrap().len(), 6);
    let tis = s.task_instances(first).unwrap();
    assert_eq!(tis[1].pool.as_deref(), Some("p"));
    assert_eq!(tis[0].max_tries, 2);
    assert_eq!(tis[0].state, TaskState::Pending);
    let ev = s.events(first).unwrap();
    assert_eq!(ev[0].state, "QUEUED");
    assert_eq!(ev[0].detail.as_deref(), Some("scheduled"));
    // The grid's filter: by state and by trigger, with paging.
    s.cancel_runs(&[first], 11, "test").unwrap();
    let cancelled = RunFilter {
        state: Some(RunState::Cancelled),
        trigger: None,
    };
    assert_eq!(
        starts(s.runs_page("nightly", None, 9, cancelled).unwrap()),
        [10]
    );
    assert_eq!(
        starts(s.runs_page("nightly", Some(10), 9, cancelled).unwrap()),
        [0i64; 0]
    );
    let backfills = RunFilter {
        state: None,
        trigger: Some(Trigger::Backfill),
    };
    assert!(
        s.runs_page("nightly", None, 9, backfills)
            .unwrap()
            .is_empty()
    );
    let scheduled = RunFilter {
        state: Some(RunState::Queued),
        trigger: Some(Trigger::Scheduled),
    };
    assert_eq!(
        starts(s.runs_page("nightly", None, 9, scheduled).unwrap()),
        [30, 20]
    );
}

fn run_concurrency_and_outcomes(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let tasks = [task("a", None), task("b", None)];
    let r1 = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
    let r2 = s.create_run(&new_run("r2", 20, &v), &tasks).unwrap().pk();
    assert!(s.activate_run(r1, 1, 1).unwrap());
    assert!(!s.activate_run(r2, 1, 1).unwrap(), "max_active_runs = 1");
    assert!(!s.activate_run(r1, 1, 1).unwrap(), "already running");
    let decisions = [
        ("a".to_owned(), TaskState::Queued),
        ("b".to_owned(), TaskState::Skipped),
    ];
    assert_eq!(s.decide_pending(r1, &decisions, 2).unwrap(), 2);
    assert_eq!(s.decide_pending(r1, &decisions, 2).unwrap(), 0);
    let a = s.task_instances(r1).unwrap()[0].pk;
    assert_eq!(s.claim(&claim_of(a, "A", 3)).unwrap(), Some(1));
    assert_eq!(s.running_task_instances().unwrap().len(), 1);
    assert_eq!(
        s.live_task_counts().unwrap(),
        [("nightly".into(), "RUNNING".into(), 1)]
    );
    assert!(
        s.record_spawn(a, 1, "A", 7, Some(99), "logs/a.log")
            .unwrap()
    );
    let ti = &s.task_instances(r1).unwrap()[0];
    assert_eq!((ti.pid, ti.pid_start), (Some(7), Some(99)));
    assert_eq!(ti.owner.as_deref(), Some("A"));
    assert!(
        s.finish_try(&finish(a, 1, "A", 2_003, TaskState::Success))
            .unwrap()
    );
    let t = &s.tries(r1).unwrap()[0];
    assert_eq!(t.state, TaskState::Success);
    assert_eq!(t.duration_ms, Some(2));
    assert_eq!(t.pid, Some(7), "the pid recorded at spawn stays");
    assert_eq!(t.log_path.as_deref(), Some("logs/a.log"));
    assert_eq!(t.rows_loaded, Some(3));
    assert_eq!(s.tries_of(&[(a, 1), (a, 2)]).unwrap(), vec![t.clone()]);
    assert!(s.tries_of(&[]).unwrap().is_empty());
    assert!(s.running_task_instances().unwrap().is_empty());
    assert!(s.finish_run(r1, RunState::Success, 9).unwrap());
    assert!(
        !s.finish_run(r1, RunState::Failed, 9).unwrap(),
        "already finished"
    );
    let run = s.run(r1).unwrap().unwrap();
    assert_eq!((run.status, run.rows_loaded), (RunState::Success, 3));
    assert_eq!(
        s.recent_metrics("nightly", "a", 100, 5).unwrap(),
        ["{\"rows\":3}"]
    );
    assert_eq!(s.recent_metrics("nightly", "a", 10, 5).unwrap().len(), 0);
    assert_eq!(s.recent_durations("nightly", 100, 3).unwrap()["a"], [2]);
    // The next run may start now; a shutdown puts it back to QUEUED while no task runs.
    assert!(s.activate_run(r2, 10, 1).unwrap());
    assert_eq!(s.requeue_idle_runs(&[r1, r2], 11).unwrap(), 1);
    assert_eq!(s.run(r2).unwrap().unwrap().status, RunState::Queued);
    let node = DbtNode {
        unique_id: "model.p.orders".into(),
        resource_type: "model".into(),
        status: "success".into(),
        execution_time: Some(0.5),
        failures: None,
        rows_affected: Some(12),
        message: Some("OK".into()),
        invocation_id: Some("inv".into()),
    };
    s.record_dbt_nodes(r1, a, 1, "a", &[node.clone(), node.clone()])
        .unwrap();
    s.record_dbt_nodes(r1, a, 1, "a", std::slice::from_ref(&node))
        .unwrap();
    assert_eq!(s.dbt_nodes(r1).unwrap(), [("a".into(), 1, node)]);
    assert_eq!(s.consecutive_failed_runs("nightly", 100).unwrap(), 0);
}

fn sensors_give_back_their_try(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let run = s
        .create_run(&new_run("r1", 10, &v), &[task("wait", None)])
        .unwrap()
        .pk();
    s.decide_pending(run, &[("wait".into(), TaskState::Queued)], 1)
        .unwrap();
    let ti = s.task_instances(run).unwrap()[0].pk;
    assert_eq!(s.claim(&claim_of(ti, "A", 5)).unwrap(), Some(1));
    assert_eq!(s.reschedule(ti, 1, "B", 5, 50).unwrap(), None, "not B's");
    assert_eq!(s.reschedule(ti, 1, "A", 5, 50).unwrap(), Some(5));
    let t = &s.task_instances(run).unwrap()[0];
    assert_eq!(
        (t.state, t.try_number, t.pokes, t.waiting_since),
        (TaskState::Queued, 0, 1, Some(5))
    );
    assert!(s.tries(run).unwrap().is_empty(), "a poke is not a try");
    assert_eq!(s.claim(&claim_of(ti, "A", 10)).unwrap(), None, "not yet");
    assert_eq!(s.claim(&claim_of(ti, "A", 60)).unwrap(), Some(1));
    assert_eq!(s.reschedule(ti, 1, "A", 60, 90).unwrap(), Some(5));
}

fn rerun_clear_and_mark(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let tasks = [task("a", None), task("b", None)];
    let run = s.create_run(&new_run("r1", 10, &v), &tasks).unwrap().pk();
    assert!(s.activate_run(run, 1, 4).unwrap());
    s.decide_pending(
        run,
        &[
            ("a".into(), TaskState::Queued),
            ("b".into(), TaskState::UpstreamFailed),
        ],
        1,
    )
    .unwrap();
    let a = s.task_instances(run).unwrap()[0].pk;
    assert_eq!(s.claim(&claim_of(a, "A", 2)).unwrap(), Some(1));
    assert_eq!(
        s.mark_task(run, "a", "SUCCESS", "no", 3).unwrap(),
        None,
        "a running task is not marked"
    );
    assert!(
        s.finish_try(&finish(a, 1, "A", 4, TaskState::Failed))
            .unwrap()
    );
    assert!(s.finish_run(run, RunState::Failed, 5).unwrap());
    assert_eq!(s.consecutive_failed_runs("nightly", 100).unwrap(), 1);
    assert_eq!(
        s.clear_tasks(run, &[("a", 2), ("zzz", 2)], 6, "cleared by hand")
            .unwrap(),
        ["a"]
    );
    let r = s.run(run).unwrap().unwrap();
    assert_eq!(r.status, RunState::Queued);
    let t = &s.task_instances(run).unwrap()[0];
    assert_eq!((t.state, t.max_tries), (TaskState::Pending, 3));
    assert_eq!(
        s.mark_task(run, "a", "SUCCESS", "fixed outside", 7)
            .unwrap()
            .as_deref(),
        Some("PENDING")
    );
    s.settle_run(run, Some("SUCCESS"), 8).unwrap();
    assert_eq!(s.run(run).unwrap().unwrap().status, RunState::Success);
    let v2 = s.put_version("nightly", "src2", 9).unwrap();
    let tasks2 = [task("a", None), task("c", None)];
    assert!(s.reset_run(run, 9, Trigger::Manual, &v2, &tasks2).unwrap());
    assert!(
        !s.reset_run(run, 9, Trigger::Manual, &v2, &tasks2).unwrap(),
        "only a finished run is reset"
    );
    let r = s.run(run).unwrap().unwrap();
    assert_eq!(
        (r.trigger, r.version.as_str()),
        (Trigger::Manual, v2.as_str())
    );
    let states: Vec<(String, TaskState)> = s
        .task_instances(run)
        .unwrap()
        .into_iter()
        .map(|t| (t.task_id, t.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a".into(), TaskState::Pending),
            ("b".into(), TaskState::Skipped),
            ("c".into(), TaskState::Pending)
        ]
    );
    assert!(
        s.events(run)
            .unwrap()
            .iter()
            .any(|e| e.detail.as_deref() == Some("rerun"))
    );
    assert_eq!(
        s.unfinished_backfill_runs("nightly").unwrap(),
        Vec::<i64>::new()
    );
}

fn deadlines_alerts_and_flags(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let run = s
        .create_run(&new_run("r1", 10, &v), &[task("a", None)])
        .unwrap()
        .pk();
    assert!(s.set_deadline(run, 100, "on_track", Some(50)).unwrap());
    assert!(!s.set_deadline(run, 100, "on_track", Some(60)).unwrap());
    assert!(s.set_deadline(run, 100, "at_risk", Some(120)).unwrap());
    let d = s.deadline(run).unwrap();
    assert_eq!(
        (d.deadline_at, d.state.as_deref(), d.forecast_at),
        (Some(100), Some("at_risk"), Some(120))
    );
    assert_eq!(s.deadlines_of(&[run]).unwrap()[&run].forecast_at, Some(120));
    let alert = |key: &'static str, kind: &'static str| NewAlert {
        event_key: key,
        channel: "ops",
        kind,
        pipeline: "nightly",
        run_id: Some("r1"),
        task_id: Some("a"),
        try_number: Some(1),
        payload: "{}",
        now: 10,
        owner: "A",
        claim_until: 20,
    };
    let id = s
        .enqueue_alert(&alert("k1", "task_failed"))
        .unwrap()
        .unwrap();
    assert_eq!(
        s.enqueue_alert(&alert("k1", "task_failed")).unwrap(),
        None,
        "once per event and channel"
    );
    assert_eq!(
        s.claim_stale_alerts("B", 15, 40).unwrap(),
        Vec::<i64>::new(),
        "A's claim holds"
    );
    assert_eq!(s.claim_stale_alerts("B", 25, 40).unwrap(), [id]);
    assert!(!s.open_incident("ops", "nightly").unwrap());
    s.finish_alert(id, true, 1, None, 30).unwrap();
    let row = s.alert(id).unwrap().unwrap();
    assert_eq!(
        (
            row.status.as_str(),
            row.attempts,
            row.sent_at,
            row.try_number
        ),
        ("sent", 1, Some(30), Some(1))
    );
    assert!(s.open_incident("ops", "nightly").unwrap());
    let rec = s.enqueue_alert(&alert("k2", "recovered")).unwrap().unwrap();
    s.finish_alert(rec, true, 1, None, 31).unwrap();
    assert!(!s.open_incident("ops", "nightly").unwrap());
    assert_eq!(s.alerts(Some("nightly"), 10).unwrap().len(), 2);
    assert_eq!(s.alerts(Some("other"), 10).unwrap().len(), 0);
    assert_eq!(s.alerts(None, 1).unwrap()[0].id, rec, "newest first");
    s.set_paused("nightly", true, 1).unwrap();
    s.set_paused("other", false, 1).unwrap();
    assert_eq!(s.paused_pipelines().unwrap(), ["nightly"]);
    s.set_paused("nightly", false, 2).unwrap();
    assert!(s.paused_pipelines().unwrap().is_empty());
}

fn retention_removes_whole_runs(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let mut pks = vec![];
    for (i, start) in [10, 20, 30, 40].into_iter().enumerate() {
        let run_id = format!("r{i}");
        let run = s
            .create_run(&new_run(&run_id, start, &v), &[task("a", None)])
            .unwrap()
            .pk();
        pks.push(run);
        if start == 40 {
            break;
        }
        assert!(s.activate_run(run, 1, 9).unwrap());
        s.decide_pending(run, &[("a".into(), TaskState::Queued)], 1)
            .unwrap();
        let a = s.task_instances(run).unwrap()[0].pk;
        assert_eq!(s.claim(&claim_of(a, "A", 2)).unwrap(), Some(1));
        assert!(
            s.finish_try(&finish(a, 1, "A", 4, TaskState::Success))
                .unwrap()
        );
        assert!(s.finish_run(run, RunState::Success, 5).unwrap());
    }
    let pruned = s.prune(35, 1).unwrap();
    assert_eq!((pruned.runs, pruned.tries), (3, 3));
    assert_eq!(pruned.log_paths.len(), 3);
    assert_eq!(
        s.count("pipeline_runs").unwrap(),
        1,
        "the unfinished run stays"
    );
    assert_eq!(s.count("task_tries").unwrap(), 0);
    assert!(s.events(pks[0]).unwrap().is_empty());
}

fn concurrent_claimers_never_share_a_try_or_overfill_a_pool(s: &Fixture) {
    let ids: Vec<String> = (0..12).map(|i| format!("t{i}")).collect();
    let (_, tis) = queued_run(s, &ids, Some("p"));
    let v = s.put_version("nightly", "src", 0).unwrap();
    // Four claimers, each on its own connection, race for the same twelve tasks; the pool
    // has three slots.
    let won: Vec<(String, i64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = s.reopen();
                let tis = tis.clone();
                scope.spawn(move || {
                    let owner = format!("claimer-{i}");
                    let claims: Vec<Claim<'_>> = tis
                        .iter()
                        .map(|ti| Claim {
                            pool: Some(("p", 3)),
                            ..claim_of(*ti, &owner, 5)
                        })
                        .collect();
                    let mut won = vec![];
                    for _ in 0..5 {
                        // A transient failure (a lock wait that timed out) is a lost race.
                        if let Ok(got) = store.claim_batch(&claims, claims.len()) {
                            for (c, n) in claims.iter().zip(got) {
                                if n.is_some() {
                                    won.push((owner.clone(), c.ti_pk));
                                }
                            }
                        }
                    }
                    won
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(won.len(), 3, "three slots, three claims: {won:?}");
    let mut tis_won: Vec<i64> = won.iter().map(|w| w.1).collect();
    tis_won.sort();
    tis_won.dedup();
    assert_eq!(tis_won.len(), 3, "no task claimed twice: {won:?}");
    let running = s.running_task_instances().unwrap();
    assert_eq!(running.len(), 3);
    assert_eq!(s.count("task_tries").unwrap(), 3);
    // Several schedulers creating the same interval at once: one run.
    let created: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = s.reopen();
                let v = v.clone();
                scope.spawn(move || {
                    let run_id = format!("race-{i}");
                    matches!(
                        store
                            .create_run(&new_run(&run_id, 99, &v), &[task("a", None)])
                            .unwrap(),
                        Created::New(_)
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(created.iter().filter(|c| **c).count(), 1);
}

/// A claimer with two free slots handed a list of six takes the first two still free, in
/// the list's order; one handed the same list next takes the two after them.
fn a_batch_takes_at_most_its_free_slots_in_order(s: &Fixture) {
    let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let (_, mut tis) = queued_run(s, &ids, None);
    tis.reverse();
    let list = |owner: &'static str| -> Vec<Claim<'static>> {
        tis.iter().map(|ti| claim_of(*ti, owner, 5)).collect()
    };
    let first = s.claim_batch(&list("a"), 2).unwrap();
    assert_eq!(first, vec![Some(1), Some(1), None, None, None, None]);
    let second = s.claim_batch(&list("b"), 2).unwrap();
    assert_eq!(second, vec![None, None, Some(1), Some(1), None, None]);
    assert_eq!(s.running_task_instances().unwrap().len(), 4);
    assert!(
        s.claim_batch(&list("c"), 0)
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
}

/// A pipeline's `max_active_tasks` counts every claimer's running tries; a candidate its
/// pool refuses leaves its place under the pipeline's limit to the next one.
fn max_active_tasks_holds_across_claimers_and_a_pool_refusal_takes_no_slot(s: &Fixture) {
    let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let (run, tis) = queued_run(s, &ids, Some("p"));
    let limited = |ti: i64, owner: &'static str, pool: Option<(&'static str, u32)>| Claim {
        pipeline_limit: ("nightly", 2),
        pool,
        ..claim_of(ti, owner, 5)
    };
    // A takes t0 into pool `p` (one slot): the pool is full, the pipeline has one of two.
    assert_eq!(
        s.claim_batch(&[limited(tis[0], "A", Some(("p", 1)))], 1)
            .unwrap(),
        vec![Some(1)]
    );
    // B: t1 is refused by the full pool, so t2 (claimed outside the pool) gets the
    // pipeline's second place, and t3 finds the pipeline full.
    let batch = [
        limited(tis[1], "B", Some(("p", 1))),
        limited(tis[2], "B", None),
        limited(tis[3], "B", None),
    ];
    assert_eq!(s.claim_batch(&batch, 3).unwrap(), vec![None, Some(1), None]);
    // Another claimer finds the pipeline full however many slots it has.
    let rest: Vec<Claim<'_>> = tis[3..].iter().map(|ti| limited(*ti, "C", None)).collect();
    assert!(s.claim_batch(&rest, 3).unwrap().iter().all(Option::is_none));
    // One ends: its place goes to the first candidate still free.
    assert_eq!(
        s.finish_tries(&[finish(tis[0], 1, "A", 9, TaskState::Success)])
            .unwrap(),
        vec![true]
    );
    assert_eq!(s.claim_batch(&rest, 3).unwrap(), vec![Some(1), None, None]);
    let running: Vec<TaskState> = states_of(s, run);
    assert_eq!(
        running,
        vec![
            TaskState::Success,
            TaskState::Queued,
            TaskState::Running,
            TaskState::Running,
            TaskState::Queued,
            TaskState::Queued,
        ]
    );
}

/// A pass reads a new run whole, then only what changed: whatever changed after the read
/// that gave the cursor comes in the next one, with its new state.
fn a_delta_read_brings_every_change_since_its_cursor(s: &Fixture) {
    let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let (run, tis) = queued_run(s, &ids, None);
    let (rows, cursor) = s.task_instances_delta(&[run], &[], None).unwrap();
    assert_eq!(rows.len(), 3, "a run read whole gives every task instance");
    let mut cursor = cursor;
    for (i, ti) in tis.iter().enumerate() {
        assert_eq!(s.claim(&claim_of(*ti, "A", 5)).unwrap(), Some(1));
        let (rows, next) = s.task_instances_delta(&[], &[run], cursor).unwrap();
        let changed = rows.iter().find(|r| r.pk == *ti);
        assert_eq!(
            changed.map(|r| r.state),
            Some(TaskState::Running),
            "claim {i}: the claimed instance comes with its new state: {rows:?}"
        );
        assert!(rows.iter().all(|r| r.run_pk == run));
        cursor = next;
    }
    assert_eq!(
        s.task_instances_delta(&[], &[], cursor).unwrap().0.len(),
        0,
        "no runs, no rows"
    );
}

fn a_batch_of_outcomes_is_fenced_try_by_try(s: &Fixture) {
    let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let (run, tis) = queued_run(s, &ids, None);
    for ti in &tis {
        assert_eq!(s.claim(&claim_of(*ti, "A", 5)).unwrap(), Some(1));
    }
    let fin = |ti: i64, owner: &str, state: TaskState| finish(ti, 1, owner, 9, state);
    let failed = FinishTry {
        error: Some("exit code 3".into()),
        exit_code: Some(3),
        ..fin(tis[2], "A", TaskState::Failed)
    };
    let done = s
        .finish_tries(&[
            fin(tis[0], "A", TaskState::Success),
            fin(tis[1], "B", TaskState::Success),
            failed,
        ])
        .unwrap();
    assert_eq!(
        done,
        vec![true, false, true],
        "the wrong owner's outcome is refused"
    );
    let states = states_of(s, run);
    assert_eq!(
        states,
        vec![TaskState::Success, TaskState::Running, TaskState::Failed]
    );
    let tries = s
        .tries_of(&[(tis[0], 1), (tis[1], 1), (tis[2], 1)])
        .unwrap();
    let state_of = |ti: i64| tries.iter().find(|t| t.ti_pk == ti).unwrap().state;
    assert_eq!(state_of(tis[0]), TaskState::Success);
    assert_eq!(state_of(tis[1]), TaskState::Running);
    assert_eq!(state_of(tis[2]), TaskState::Failed);
    let c = tries.iter().find(|t| t.ti_pk == tis[2]).unwrap();
    assert_eq!(
        (c.exit_code, c.error.as_deref(), c.rows_loaded, c.end_time),
        (Some(3), Some("exit code 3"), Some(3), Some(9)),
        "every field of an outcome lands on its own try: {c:?}"
    );
    let events = s.events(run).unwrap();
    let ended: Vec<(&str, &str, Option<&str>)> = events
        .iter()
        .filter(|e| e.try_number == Some(1))
        .map(|e| {
            (
                e.task_id.as_deref().unwrap_or(""),
                e.state.as_str(),
                e.detail.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ended,
        vec![("c", "FAILED", Some("exit code 3"))],
        "a failure is an event with its error; a success and a refused outcome are not"
    );
    // The same task instance twice in one batch: the first outcome holds, and the second
    // meets its write.
    let done = s
        .finish_tries(&[
            fin(tis[1], "A", TaskState::Success),
            fin(tis[1], "A", TaskState::Failed),
        ])
        .unwrap();
    assert_eq!(done, vec![true, false]);
    assert_eq!(states_of(s, run)[1], TaskState::Success);
    assert!(s.finish_tries(&[]).unwrap().is_empty());
}

fn the_store_clock_moves(s: &Fixture) {
    let a = s.now_us().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let b = s.now_us().unwrap();
    assert!(b > a);
    // The server here shares this machine's clock.
    assert!((a - nightshift_core::clock::real_now_us()).abs() < 60_000_000);
}

fn a_newer_schema_is_refused(s: &Fixture) {
    let mut marked = false;
    #[cfg(feature = "sqlite")]
    if let Some(db) = s.sqlite() {
        db.bulk(|tx| {
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
                [],
            )
        })
        .unwrap();
        marked = true;
    }
    #[cfg(feature = "postgres")]
    if let Some(db) = s.postgres() {
        db.bulk(|tx| {
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
                &[],
            )
        })
        .unwrap();
        marked = true;
    }
    assert!(marked);
    match Store::open(s.location()) {
        Err(Error::NewerSchema { found: 999, .. }) => {}
        Err(e) => panic!("expected NewerSchema, got {e}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

fn engines_are_listed_with_their_running_tries(s: &Fixture) {
    let v = s.put_version("nightly", "src", 0).unwrap();
    let run = s
        .create_run(&new_run("r1", 10, &v), &[task("a", None)])
        .unwrap()
        .pk();
    s.decide_pending(run, &[("a".into(), TaskState::Queued)], 1)
        .unwrap();
    let a = s.task_instances(run).unwrap()[0].pk;
    assert_eq!(s.claim(&claim_of(a, "w1", 2)).unwrap(), Some(1));
    let row = |owner: &str, role: &str, at: i64| EngineRow {
        owner: owner.into(),
        host: "h".into(),
        pid: 7,
        role: role.into(),
        pools: None,
        started_at: 1,
        heartbeat_at: at,
        running: 0,
    };
    s.beat(&row("w1", "worker", 100)).unwrap();
    s.beat(&row("u1", "standby", 90)).unwrap();
    s.beat(&row("u1", "scheduler", 110)).unwrap();
    let all = s.engines().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].owner.as_str(), all[0].role.as_str(), all[0].running),
        ("u1", "scheduler", 0)
    );
    assert_eq!((all[1].owner.as_str(), all[1].running), ("w1", 1));
    s.forget_engine("u1", 50).unwrap();
    assert_eq!(s.engines().unwrap().len(), 1);
    s.forget_engine("nobody", 105).unwrap();
    assert!(s.engines().unwrap().is_empty(), "stale rows go too");
}

fn shipped_logs_read_back_from_any_offset(s: &Fixture) {
    s.append_log(7, 1, 0, b"hello ").unwrap();
    s.append_log(7, 1, 6, b"world\n").unwrap();
    s.append_log(7, 1, 6, b"world\n").unwrap();
    s.append_log(7, 2, 0, b"other try").unwrap();
    assert_eq!(s.read_log(7, 1, 0, 1 << 20).unwrap(), b"hello world\n");
    assert_eq!(s.read_log(7, 1, 3, 1 << 20).unwrap(), b"lo world\n");
    assert_eq!(s.read_log(7, 1, 12, 1 << 20).unwrap(), b"");
    assert_eq!(
        s.read_log(7, 1, 0, 2).unwrap(),
        b"hello ",
        "whole chunks, at least max"
    );
    s.append_log(7, 1, 20, b"after a gap").unwrap();
    assert_eq!(
        s.read_log(7, 1, 0, 1 << 20).unwrap(),
        b"hello world\n",
        "stops at a gap"
    );
}
