//! The threads that carry tries: a try's whole life (prepare, spawn, supervise, conclude)
//! runs on one of them, and a thread whose try ended waits a while for the next try instead
//! of exiting. Making a thread costs the kernel a stack mapping, a clone and, at its end,
//! an unmap; a wide fan-out starts hundreds of tries a second, each of which would pay that.
//!
//! The crew grows without bound (a try blocks its thread for as long as it runs, so a
//! fixed number would queue tries behind long ones) and shrinks on its own: a thread idle
//! for [`IDLE`] exits.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long a thread whose try ended waits for another before it exits.
const IDLE: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// The idle threads, each by its id and the sender of its inbox.
#[derive(Default)]
struct Idle {
    next_id: u64,
    waiting: Vec<(u64, mpsc::Sender<Job>)>,
}

fn idle() -> &'static Mutex<Idle> {
    static IDLE_THREADS: OnceLock<Mutex<Idle>> = OnceLock::new();
    IDLE_THREADS.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Idle> {
    idle().lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `job` on an idle thread of the crew, or on a new one named `name`. The error is
/// that of a thread that could not be made; the job is then dropped without running.
pub fn run(name: &str, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut job: Job = Box::new(job);
    // The thread popped here is no longer in the list, so it cannot time out and exit:
    // it is waiting for exactly this job.
    let popped = lock().waiting.pop();
    if let Some((_, tx)) = popped {
        match tx.send(job) {
            Ok(()) => return Ok(()),
            // Not expected: a listed thread leaves only after taking itself off the list,
            // and it runs nothing while listed. Should its inbox be gone all the same, a new
            // thread takes the job.
            Err(mpsc::SendError(back)) => job = back,
        }
    }
    let id = {
        let mut l = lock();
        l.next_id += 1;
        l.next_id
    };
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || serve(id, job))
        .map(|_| ())
}

fn serve(id: u64, first: Job) {
    let (tx, rx) = mpsc::channel::<Job>();
    let mut job = first;
    loop {
        job();
        lock().waiting.push((id, tx.clone()));
        job = loop {
            match rx.recv_timeout(IDLE) {
                Ok(next) => break next,
                Err(_) => {
                    let mut l = lock();
                    if let Some(at) = l.waiting.iter().position(|(i, _)| *i == id) {
                        l.waiting.swap_remove(at);
                        return;
                    }
                    // A caller took this thread off the list just now: its job is on the
                    // way, so wait for it.
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_thread_whose_job_ended_takes_the_next_one() {
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        run("crew-test", move || {
            t.send(std::thread::current().id()).unwrap()
        })
        .unwrap();
        let first = rx.recv().unwrap();
        // The first thread lists itself as idle right after its job; give it the moment.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while lock().waiting.is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = tx.clone();
        run("crew-test", move || {
            t.send(std::thread::current().id()).unwrap()
        })
        .unwrap();
        let second = rx.recv().unwrap();
        // The test runner gives each test a process of its own, so the only idle thread
        // was the first job's.
        assert_eq!(first, second, "the idle thread took the second job");
        let ran = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = mpsc::channel();
        for _ in 0..50 {
            let ran = ran.clone();
            let done = done_tx.clone();
            run("crew-test", move || {
                ran.fetch_add(1, Ordering::SeqCst);
                done.send(()).unwrap();
            })
            .unwrap();
        }
        for _ in 0..50 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 50, "every job ran exactly once");
    }

    #[test]
    fn jobs_that_block_do_not_hold_up_the_others() {
        // Ten jobs wait for one another: only ten threads at once can finish them.
        let barrier = Arc::new(std::sync::Barrier::new(10));
        let (tx, rx) = mpsc::channel();
        for _ in 0..10 {
            let b = barrier.clone();
            let tx = tx.clone();
            run("crew-test", move || {
                b.wait();
                tx.send(()).unwrap();
            })
            .unwrap();
        }
        for _ in 0..10 {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("every blocked job got a thread");
        }
    }
}
