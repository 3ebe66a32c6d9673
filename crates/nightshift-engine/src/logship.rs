//! Shipping try logs into a shared store, so any host can read and follow a try's log
//! (`nightshift logs`, the UI and the API fall back to the store when the file is not on
//! their host). Only with a PostgreSQL store: on SQLite every reader is on this machine.
//!
//! A thread with its own store connection reads what each running try's log file gained
//! since the last look (the file only grows: the head, then the joined tail at the end, see
//! [`crate::trylog`]) and appends it, keyed by byte offset, once a second and at once
//! when the try ends. It never touches supervision: a slow or absent store only
//! delays the copy, and the file on this host stays complete.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nightshift_store::{Location, Store};
use tracing::warn;

/// How much of a log one store write carries.
const CHUNK: usize = 256 * 1024;

/// How often the logs of running tries are looked at.
const SWEEP: Duration = Duration::from_secs(1);

enum Msg {
    Start {
        ti: i64,
        try_number: u32,
        path: PathBuf,
    },
    End {
        ti: i64,
        try_number: u32,
    },
}

/// The handle tries use; cheap to clone.
#[derive(Clone)]
pub struct Shipper {
    tx: mpsc::Sender<Msg>,
}

struct Shipping {
    path: PathBuf,
    offset: u64,
    ended: bool,
}

impl Shipper {
    /// Starts the shipping thread on its own connection to the store at `location`.
    pub fn start(location: &Location) -> Result<Shipper, nightshift_store::Error> {
        let store = Store::open_waiting(location, Duration::from_millis(500))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("log-shipper".into())
            .spawn(move || run(store, rx))
            .map_err(|e| {
                nightshift_store::Error::Corrupt(format!("cannot start the log shipper: {e}"))
            })?;
        Ok(Shipper { tx })
    }

    pub fn started(&self, ti: i64, try_number: u32, path: PathBuf) {
        let _ = self.tx.send(Msg::Start {
            ti,
            try_number,
            path,
        });
    }

    /// The try ended and its log is final: ship the rest, then forget it.
    pub fn ended(&self, ti: i64, try_number: u32) {
        let _ = self.tx.send(Msg::End { ti, try_number });
    }
}

fn run(store: Store, rx: mpsc::Receiver<Msg>) {
    let mut live: HashMap<(i64, u32), Shipping> = HashMap::new();
    let mut warned = false;
    let mut report = |r: Result<(), nightshift_store::Error>| match r {
        Ok(()) => {
            warned = false;
            true
        }
        Err(e) => {
            // The file keeps everything; the copy catches up when the store is back.
            if !warned {
                warn!(error = %e, "cannot ship try logs to the store; other hosts see them late");
                warned = true;
            }
            false
        }
    };
    let mut next_sweep = Instant::now() + SWEEP;
    loop {
        // A try that ended is shipped at once; running ones once a sweep. (Looking at every
        // live file on every message costs a busy host more than its tasks do.)
        match rx.recv_timeout(next_sweep.saturating_duration_since(Instant::now())) {
            Ok(Msg::Start {
                ti,
                try_number,
                path,
            }) => {
                live.insert(
                    (ti, try_number),
                    Shipping {
                        path,
                        offset: 0,
                        ended: false,
                    },
                );
            }
            Ok(Msg::End { ti, try_number }) => {
                if let Some(s) = live.get_mut(&(ti, try_number)) {
                    s.ended = true;
                    if report(ship(&store, ti, try_number, s)) {
                        live.remove(&(ti, try_number));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if live.is_empty() => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(SWEEP),
        }
        if Instant::now() < next_sweep {
            continue;
        }
        next_sweep = Instant::now() + SWEEP;
        let mut done = vec![];
        for (&(ti, try_number), s) in live.iter_mut() {
            if !report(ship(&store, ti, try_number, s)) {
                break;
            }
            if s.ended {
                done.push((ti, try_number));
            }
        }
        for k in done {
            live.remove(&k);
        }
    }
}

/// Appends what the file gained since `s.offset`.
fn ship(
    store: &Store,
    ti: i64,
    try_number: u32,
    s: &mut Shipping,
) -> Result<(), nightshift_store::Error> {
    let Ok(mut f) = std::fs::File::open(&s.path) else {
        // Created on the try's first line: nothing yet (or a log that could not be written).
        return Ok(());
    };
    if f.seek(SeekFrom::Start(s.offset)).is_err() {
        return Ok(());
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        store.append_log(ti, try_number, s.offset as i64, &buf[..n])?;
        s.offset += n as u64;
    }
}
