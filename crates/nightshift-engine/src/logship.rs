//! Shipping try logs into a shared store, so any host can read and follow a try's log
//! (`nightshift logs`, the UI and the API fall back to the store when the file is not on
//! their host). Only with a PostgreSQL store: on SQLite every reader is on this machine.
//!
//! A thread with its own store connection reads what each running try's log file gained
//! since the last look (the file only grows: the head, then the joined tail at the end, see
//! [`crate::trylog`]) and appends it, keyed by byte offset, about once a second and once
//! more after the try ends. It never touches supervision: a slow or absent store only
//! delays the copy, and the file on this host stays complete.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use nightshift_store::{Location, Store};
use tracing::warn;

/// How much of a log one store write carries.
const CHUNK: usize = 256 * 1024;

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
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => accept(&mut live, m),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if live.is_empty() => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        while let Ok(m) = rx.try_recv() {
            accept(&mut live, m);
        }
        let mut done = vec![];
        for (&(ti, try_number), s) in live.iter_mut() {
            match ship(&store, ti, try_number, s) {
                Ok(()) => {
                    warned = false;
                    if s.ended {
                        done.push((ti, try_number));
                    }
                }
                Err(e) => {
                    // The file keeps everything; the copy catches up when the store is back.
                    if !warned {
                        warn!(error = %e, "cannot ship try logs to the store; other hosts see them late");
                        warned = true;
                    }
                    break;
                }
            }
        }
        for k in done {
            live.remove(&k);
        }
    }
}

fn accept(live: &mut HashMap<(i64, u32), Shipping>, m: Msg) {
    match m {
        Msg::Start {
            ti,
            try_number,
            path,
        } => {
            live.insert(
                (ti, try_number),
                Shipping {
                    path,
                    offset: 0,
                    ended: false,
                },
            );
        }
        Msg::End { ti, try_number } => {
            if let Some(s) = live.get_mut(&(ti, try_number)) {
                s.ended = true;
            }
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
