//! The store's contract, tested through the interface: what every backend must do.

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join(".nightshift/nightshift.db")).unwrap();
    (dir, s)
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

#[test]
fn one_run_per_interval() {
    let (_d, s) = store();
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
    let s2 = Store::open(s.path()).unwrap();
    assert!(matches!(
        s2.create_run(&new_run("r1", 10, &v), &tasks).unwrap(),
        Created::Existing(_)
    ));
}

#[test]
fn cancelling_a_run_records_its_running_try_and_fences_its_outcome() {
    let (_d, s) = store();
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
    let states: Vec<TaskState> = s
        .task_instances(run)
        .unwrap()
        .iter()
        .map(|t| t.state)
        .collect();
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

#[test]
fn claims_are_fenced() {
    let (_d, s) = store();
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

#[test]
fn pool_slots_are_shared() {
    let (_d, s) = store();
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

#[test]
fn scheduler_lease_is_exclusive() {
    let (_d, s) = store();
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
