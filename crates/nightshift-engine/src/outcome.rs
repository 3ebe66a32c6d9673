//! The outcome writer: every store write about a running try (its pid, its dbt results, its
//! outcome) goes through one thread with a store connection of its own, so supervision never
//! waits on the store.
//!
//! An outcome goes to the store at once (outcomes that arrive together share one
//! transaction, each still fenced on its own); when the store refuses it, it is first written to a
//! small fsync'ed journal file under `.nightshift/outcomes/`, then retried with backoff for
//! as long as the error is transient (locked, busy, I/O, disk full) — it is never dropped.
//! (Journaling only on refusal keeps an fsync off every try's path; a crash in the instant
//! between a process's exit and its first write loses nothing either: recovery finds the try
//! RUNNING with a dead owner and runs it again without using a retry.) The write is fenced on
//! (task instance, try, owner): a fence that no longer holds means the try belongs to someone
//! else and the outcome is discarded. A journal file left by a stopped process is replayed
//! by the next engine before it recovers orphans, so an outcome decided before a crash is
//! the one recorded.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use nightshift_store::{DbtNode, FinishTry, Store};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::executor::{KillReason, Stopper};

/// A try's outcome as it will be written: owned, so it can wait in the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The try's outcome and the task's next state (its owner is always set: fenced).
    #[serde(flatten)]
    pub finish: FinishTry,
    /// dbt node results to record first: (run, task id, nodes).
    pub dbt_nodes: Option<(i64, String, Vec<DbtNode>)>,
    /// A sensor whose condition was not met yet: (poke started, next poke) instead of an
    /// outcome.
    pub reschedule: Option<(i64, i64)>,
}

impl Outcome {
    fn key(&self) -> (i64, u32) {
        (self.finish.ti_pk, self.finish.try_number)
    }

    fn file_name(&self) -> String {
        format!("{}-{}.json", self.finish.ti_pk, self.finish.try_number)
    }

    /// Writes it to the store. `Ok(false)`: the fence did not hold; nothing was written.
    fn apply(&self, store: &Store) -> nightshift_store::Result<bool> {
        let f = &self.finish;
        if let Some((run, task, nodes)) = &self.dbt_nodes {
            store.record_dbt_nodes(*run, f.ti_pk, f.try_number, task, nodes)?;
        }
        if let Some((started, next)) = self.reschedule {
            let owner = f.owner.as_deref().unwrap_or_default();
            return store
                .reschedule(f.ti_pk, f.try_number, owner, started, next)
                .map(|s| s.is_some());
        }
        store.finish_try(f)
    }
}

/// A try's process, recorded so a restart can find and kill it.
pub struct SpawnRecord {
    pub ti_pk: i64,
    pub try_number: u32,
    pub owner: String,
    pub pid: u32,
    /// Its start time is read when the record is written; an exited one is not recorded.
    pub identity: crate::procs::Identity,
    pub log_path: String,
    /// Stops the try when the record shows its claim was lost.
    pub stopper: Stopper,
}

enum Job {
    Spawn(SpawnRecord),
    Outcome(Box<Outcome>, Option<PathBuf>),
    Flush(mpsc::Sender<()>),
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Instant, Job)>,
    pending: Arc<Mutex<HashSet<(i64, u32)>>>,
}

/// Called with a task instance's pk once its outcome is recorded (or found moot).
pub type OnRecorded = Box<dyn Fn(i64) + Send>;

impl Writer {
    /// Starts the writer on its own connection to the store at `location`, journaling
    /// under `journal`. `degraded` is raised while the store refuses writes.
    pub fn start(
        location: &nightshift_store::Location,
        journal: PathBuf,
        degraded: Arc<AtomicBool>,
        on_recorded: OnRecorded,
    ) -> Result<Writer, nightshift_store::Error> {
        // A short lock wait per statement: the thread retries with backoff anyway, and stays
        // responsive to new jobs meanwhile.
        let store = Store::open_waiting(location, Duration::from_millis(500))?;
        let (tx, rx) = mpsc::channel();
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let writer = Writer {
            tx,
            pending: pending.clone(),
        };
        let state = WriterThread {
            store,
            pending,
            degraded,
            queue: VecDeque::new(),
            delayed: vec![],
            journal,
            on_recorded,
            singles: 0,
        };
        std::thread::Builder::new()
            .name("outcome-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| {
                nightshift_store::Error::Corrupt(format!("cannot start the writer: {e}"))
            })?;
        Ok(writer)
    }

    /// Whether an outcome of this task instance waits to be written (its try is not an
    /// orphan, whatever the store says).
    pub fn is_pending(&self, ti_pk: i64) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(ti, _)| *ti == ti_pk)
    }

    pub fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Records a try's pid after `delay` (a try that ends sooner has it written with its
    /// outcome instead).
    pub fn record_spawn(&self, record: SpawnRecord, delay: Duration) {
        let _ = self.tx.send((Instant::now() + delay, Job::Spawn(record)));
    }

    /// Queues the outcome for the store (journaled if the store refuses it).
    pub fn submit(&self, outcome: Outcome) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(outcome.key());
        let _ = self
            .tx
            .send((Instant::now(), Job::Outcome(Box::new(outcome), None)));
    }

    /// Queues the outcomes journaled by an engine that stopped before writing them.
    pub fn replay(&self, journal: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(journal) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Outcome>(&b).ok())
            {
                Some(o) => {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(o.key());
                    info!(
                        task_instance = o.finish.ti_pk,
                        try_number = o.finish.try_number,
                        "replaying a journaled outcome"
                    );
                    let _ = self
                        .tx
                        .send((Instant::now(), Job::Outcome(Box::new(o), Some(path))));
                    n += 1;
                }
                None => {
                    // A torn write (the machine died mid-write): the try was never reported
                    // finished, so orphan recovery handles it.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        n
    }

    /// Waits until every queued job is written, or `bound` passes (the store stays
    /// unavailable: the journal keeps the outcomes for the next start).
    pub fn flush(&self, bound: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        if self.tx.send((Instant::now(), Job::Flush(tx))).is_err() {
            return false;
        }
        rx.recv_timeout(bound).is_ok()
    }
}

fn journal_write(dir: &Path, o: &Outcome) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(o.file_name());
    let tmp = dir.join(format!(".{}.tmp", o.file_name()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(o).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

struct WriterThread {
    store: Store,
    pending: Arc<Mutex<HashSet<(i64, u32)>>>,
    degraded: Arc<AtomicBool>,
    queue: VecDeque<Job>,
    delayed: Vec<(Instant, Job)>,
    journal: PathBuf,
    on_recorded: OnRecorded,
    /// This many next jobs are written one at a time (a batch among them was refused).
    singles: usize,
}

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 256;

impl WriterThread {
    fn run(mut self, rx: mpsc::Receiver<(Instant, Job)>) {
        let mut backoff = Duration::from_millis(50);
        let mut retry_at: Option<Instant> = None;
        loop {
            // Wait for work: a new job, a delayed job falling due, or the next retry.
            let now = Instant::now();
            let wake = self.delayed.iter().map(|(t, _)| *t).chain(retry_at).min();
            let ready = self.queue.front().is_some() && retry_at.is_none_or(|t| t <= now);
            if !ready {
                let got = match wake {
                    Some(t) => rx.recv_timeout(t.saturating_duration_since(now)),
                    None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                };
                match got {
                    Ok(job) => self.accept(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if self.queue.is_empty() && self.delayed.is_empty() {
                            return;
                        }
                    }
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.accept(job);
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.delayed)
                .into_iter()
                .partition(|(t, _)| *t <= now);
            self.delayed = later;
            for (_, job) in due {
                self.queue.push_back(job);
            }
            if retry_at.is_some_and(|t| t > now) {
                continue;
            }
            retry_at = None;
            while !self.queue.is_empty() {
                let mut batch = self.take_batch();
                match self.write_batch(&batch) {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(e) if e.is_transient() => {
                        if !self.degraded.swap(true, Ordering::Relaxed) {
                            warn!(error = %e, "the metadata store refuses writes; outcomes wait (journaled) and are retried");
                        }
                        for job in &mut batch {
                            if let Job::Outcome(o, file @ None) = job {
                                match journal_write(&self.journal, o) {
                                    Ok(path) => *file = Some(path),
                                    // The journal shares a full disk with the store, say: the
                                    // outcome stays in memory until the store takes it; only
                                    // a restart before then loses it (and recovery runs the
                                    // task again without using a retry).
                                    Err(e) => {
                                        warn!(error = %e, task_instance = o.finish.ti_pk, "cannot journal the outcome; keeping it in memory")
                                    }
                                }
                            }
                        }
                        for job in batch.into_iter().rev() {
                            self.queue.push_front(job);
                        }
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        break;
                    }
                    Err(e) if batch.len() > 1 => {
                        // One of them is refused for good: write them one by one, so only
                        // that one stays in the journal.
                        warn!(error = %e, outcomes = batch.len(), "a batch of outcomes was refused; writing them one at a time");
                        self.singles = batch.len();
                        for job in batch.into_iter().rev() {
                            self.queue.push_front(job);
                        }
                    }
                    Err(e) => {
                        // Not something waiting fixes: keep the journal file for the next
                        // start and say so.
                        error!(error = %e, "cannot write to the metadata store; the outcome stays in the journal");
                        for job in &batch {
                            self.forget(job, false);
                        }
                    }
                }
            }
            if retry_at.is_none() && self.degraded.swap(false, Ordering::Relaxed) {
                info!("the metadata store takes writes again; waiting outcomes are recorded");
            }
        }
    }

    fn accept(&mut self, (at, job): (Instant, Job)) {
        if let Job::Outcome(o, _) = &job {
            // The outcome carries the pid: a spawn record still waiting is moot.
            self.delayed
                .retain(|(_, j)| !matches!(j, Job::Spawn(s) if (s.ti_pk, s.try_number) == o.key()));
        }
        if at > Instant::now() {
            self.delayed.push((at, job));
        } else {
            self.queue.push_back(job);
        }
    }

    /// The next jobs to write together: a run of plain outcomes (one transaction for all),
    /// else the first job alone.
    fn take_batch(&mut self) -> Vec<Job> {
        let plain = |j: &Job| matches!(j, Job::Outcome(o, _) if o.dbt_nodes.is_none() && o.reschedule.is_none());
        let mut batch = vec![];
        if self.singles > 0 {
            self.singles -= 1;
        } else {
            while batch.len() < MAX_BATCH && self.queue.front().is_some_and(plain) {
                batch.extend(self.queue.pop_front());
            }
        }
        if batch.is_empty() {
            batch.extend(self.queue.pop_front());
        }
        batch
    }

    fn write_batch(&mut self, batch: &[Job]) -> nightshift_store::Result<()> {
        if let [job] = batch {
            return self.write(job);
        }
        let finishes: Vec<FinishTry> = batch
            .iter()
            .filter_map(|j| match j {
                Job::Outcome(o, _) => Some(o.finish.clone()),
                _ => None,
            })
            .collect();
        let done = self.store.finish_tries(&finishes)?;
        for (job, recorded) in batch.iter().zip(done) {
            self.recorded(job, recorded);
        }
        Ok(())
    }

    /// An outcome's write is over: said when its fence did not hold, then forgotten.
    fn recorded(&mut self, job: &Job, recorded: bool) {
        if let Job::Outcome(o, _) = job
            && !recorded
        {
            warn!(
                task_instance = o.finish.ti_pk,
                try_number = o.finish.try_number,
                "outcome not recorded: the try lost its claim"
            );
        }
        self.forget(job, true);
    }

    fn write(&mut self, job: &Job) -> nightshift_store::Result<()> {
        match job {
            Job::Spawn(s) => {
                // A process that has exited is moot: its try is concluding, and the outcome
                // carries the pid. Recording it without a start time to tell it from a later
                // process with the same pid would be worse than not recording it.
                let crate::procs::Seen::Running { start } = s.identity.look() else {
                    return Ok(());
                };
                let recorded = self.store.record_spawn(
                    s.ti_pk,
                    s.try_number,
                    &s.owner,
                    s.pid,
                    start,
                    &s.log_path,
                )?;
                let concluded = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains(&(s.ti_pk, s.try_number));
                if !recorded && !concluded && s.stopper.stop(KillReason::LostClaim) {
                    warn!(
                        task_instance = s.ti_pk,
                        "claim lost while the try ran; stopping it"
                    );
                }
            }
            Job::Outcome(o, _) => {
                let recorded = o.apply(&self.store)?;
                self.recorded(job, recorded);
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
        Ok(())
    }

    fn forget(&mut self, job: &Job, remove_file: bool) {
        if let Job::Outcome(o, file) = job {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&o.key());
            if remove_file && let Some(f) = file {
                let _ = std::fs::remove_file(f);
            }
            (self.on_recorded)(o.finish.ti_pk);
        }
    }
}
