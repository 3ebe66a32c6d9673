//! Crashes and restarts for real: SIGKILL of `nightshift up` at named points and in the
//! middle of a task, SIGTERM drains, a second scheduler. After each, the invariants hold:
//! one run per interval, no try left RUNNING, no process of a finished try alive, and no
//! two processes of one task at once.

use std::process::Child;

use crate::support::*;

/// A marker that `sleep` accepts as an extra (negligible) duration and that no other
/// process carries on its command line.
fn marker(tag: u32) -> String {
    format!("0.00000{}{tag}", std::process::id())
}

/// A pipeline whose middle task records when it starts and ends, refuses to start while
/// an earlier process of itself is alive (writing OVERLAP), and takes `secs` seconds.
fn guarded_project(secs: &str, marker: &str) -> TestProject {
    let p = TestProject::new();
    p.file(
        "nightshift.toml",
        "kill_grace = \"1s\"\nshutdown_grace = \"30s\"\n",
    );
    p.file(
        "guarded.sh",
        &format!(
            "#!/bin/sh\n\
             for pid in $(cat pids.txt 2>/dev/null); do s=$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ] && echo OVERLAP >> events.txt; done\n\
             echo $$ >> pids.txt\n\
             echo \"start $NIGHTSHIFT_TRY_NUMBER\" >> events.txt\n\
             sleep {secs} {marker}\n\
             echo \"end $NIGHTSHIFT_TRY_NUMBER\" >> events.txt\n"
        ),
    );
    let src = daily("p", &yesterday()).replace("retries = 0", "retries = 2")
        + "[[task]]\nid = \"first\"\ncommand = [\"true\"]\n\n\
           [[task]]\nid = \"guarded\"\ncommand = [\"./guarded.sh\"]\ndepends_on = [\"first\"]\n\n\
           [[task]]\nid = \"last\"\ncommand = [\"true\"]\ndepends_on = [\"guarded\"]\n";
    p.file("pipelines/p.toml", &src);
    p
}

/// Runs `up` until the single run finishes, then stops it with SIGTERM.
fn up_until_done(p: &TestProject, tag: &str) {
    let mut up = p.spawn(&["up"], &[], tag);
    p.wait_for("the run to finish", || {
        p.runs("p")
            .first()
            .is_some_and(|r| r["state"] == "SUCCESS" || r["state"] == "FAILED")
    });
    sigterm(&up);
    let status = up.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}\n{}",
        p.read(&format!("{tag}.stderr"))
    );
}

/// The invariants every fault test asserts.
fn assert_nothing_lost(p: &TestProject, marker: &str) {
    let runs = p.runs("p");
    assert_eq!(runs.len(), 1, "exactly one run per interval: {runs:?}");
    assert_eq!(runs[0]["state"], "SUCCESS", "{runs:?}");
    let doc = p.tasks(runs[0]["run_id"].as_str().unwrap());
    for t in doc["tasks"].as_array().unwrap() {
        assert_eq!(t["state"], "SUCCESS", "{t}");
        for tr in t["tries"].as_array().unwrap() {
            assert_ne!(tr["state"], "RUNNING", "a try left RUNNING: {t}");
        }
    }
    assert!(
        !p.read("events.txt").contains("OVERLAP"),
        "two processes of one task ran at once:\n{}",
        p.read("events.txt")
    );
    assert_eq!(
        processes_with(marker),
        Vec::<u32>::new(),
        "a process of a finished try is alive"
    );
}

fn wait_killed(child: &mut Child) {
    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "expected the crash point to SIGKILL the process: {status:?}"
    );
}

#[test]
fn sigkill_during_a_task_then_restart_completes_the_run() {
    let marker = marker(1);
    let p = guarded_project("3", &marker);
    let mut up = p.spawn(&["up"], &[], "up1");
    p.wait_for("the guarded task to start", || {
        p.read("events.txt").contains("start 1")
    });
    sigkill(&mut up);
    // The orphaned task is still running: the restart must deal with it.
    assert!(
        !processes_with(&marker).is_empty(),
        "expected the task to outlive its scheduler"
    );
    up_until_done(&p, "up2");
    assert_nothing_lost(&p, &marker);
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let tries = task(&doc, "guarded")["tries"].as_array().unwrap().clone();
    assert_eq!(tries.len(), 2, "{tries:?}");
    assert!(
        tries[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("interrupted: the scheduler running this try"),
        "{tries:?}"
    );
    let events = p.read("events.txt");
    assert_eq!(
        events.lines().collect::<Vec<_>>(),
        ["start 1", "start 2", "end 2"],
        "try 1 was killed before try 2 started"
    );
}

#[test]
fn crash_points_recover_with_one_run_and_no_double_execution() {
    for point in [
        "after_run_created",
        "after_claim:guarded",
        "after_spawn:guarded",
        "before_outcome_commit:guarded",
    ] {
        let marker = marker(10 + point.len() as u32);
        let p = guarded_project("0.3", &marker);
        let mut up = p.spawn(&["up"], &[("NIGHTSHIFT_CRASH_AT", point)], "crash");
        wait_killed(&mut up);
        up_until_done(&p, "restart");
        assert_nothing_lost(&p, &marker);
        let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
        let tries = task(&doc, "guarded")["tries"].as_array().unwrap().len();
        let expected = if point == "after_run_created" { 1 } else { 2 };
        assert_eq!(tries, expected, "{point}: {doc}");
    }
}

#[test]
fn sigterm_lets_running_tasks_finish() {
    let marker = marker(2);
    let p = guarded_project("1", &marker);
    let mut up = p.spawn(&["up"], &[], "up");
    p.wait_for("the guarded task to start", || {
        p.read("events.txt").contains("start 1")
    });
    sigterm(&up);
    let status = up.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        p.read("events.txt").contains("end 1"),
        "the task was given its grace period"
    );
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    assert_eq!(task(&doc, "guarded")["state"], "SUCCESS");
    // Restart resumes the rest of the run.
    up_until_done(&p, "up2");
    assert_nothing_lost(&p, &marker);
}

#[test]
fn sigterm_past_the_grace_period_records_the_try_and_restart_resumes() {
    let marker = marker(3);
    let p = guarded_project("60", &marker);
    p.file(
        "nightshift.toml",
        "kill_grace = \"1s\"\nshutdown_grace = \"500ms\"\n",
    );
    let mut up = p.spawn(&["up"], &[], "up");
    p.wait_for("the guarded task to start", || {
        p.read("events.txt").contains("start 1")
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success());
    assert_eq!(
        processes_with(&marker),
        Vec::<u32>::new(),
        "the stopped try's process is gone"
    );
    let doc = p.tasks(p.runs("p")[0]["run_id"].as_str().unwrap());
    let t = task(&doc, "guarded");
    assert_eq!(t["state"], "UP_FOR_RETRY");
    assert_eq!(
        t["tries"][0]["error"],
        "interrupted: the scheduler shut down; will run again"
    );
    // Shorten the task and restart: the run completes.
    p.file(
        "guarded.sh",
        &p.read("guarded.sh").replace("sleep 60 ", "sleep 0.1 "),
    );
    up_until_done(&p, "up2");
    assert_nothing_lost(&p, &marker);
}

#[test]
fn a_second_scheduler_refuses_and_a_dead_ones_lease_is_taken_over() {
    let p = TestProject::new();
    p.file(
        "pipelines/p.toml",
        &(daily("p", &yesterday()) + "[[task]]\nid = \"a\"\ncommand = [\"true\"]\n"),
    );
    let mut first = p.spawn(&["up"], &[], "first");
    p.wait_for("the first scheduler", || {
        p.runs("p").iter().any(|r| r["state"] == "SUCCESS")
    });
    let out = p.run(&["up"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("another scheduler is running for this project: pid"),
        "{}",
        stderr(&out)
    );
    sigkill(&mut first);
    let mut second = p.spawn(&["up"], &[], "second");
    p.wait_for("the second scheduler to take over", || {
        p.read("second.stderr").contains("taking over its lease")
    });
    sigterm(&second);
    assert!(
        second.wait().unwrap().success(),
        "{}",
        p.read("second.stderr")
    );
    assert_eq!(p.runs("p").len(), 1);
}
