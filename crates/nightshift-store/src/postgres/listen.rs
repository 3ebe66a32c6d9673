//! Telling idle engines that work may be claimable, so they need not wait for their next
//! poll: every transaction that queues tasks or creates runs sends a notice on
//! [`WORK_CHANNEL`] (PostgreSQL's `NOTIFY`, delivered at commit, never for a rollback), and
//! each engine keeps one connection listening for it.
//!
//! A notice is a hint, never the truth: the woken engine reads the store as on any pass,
//! and an engine that missed a notice (its listener was reconnecting, the server restarted)
//! still finds the work at its next poll. So the listener is quiet about trouble (the
//! engine reports an unavailable store itself) and, after reconnecting, wakes its engine
//! once for whatever it may have missed while away.

use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use tracing::debug;

use crate::{PgLocation, WorkWatcher};

/// The channel the store's writes notify on, as a literal for statements built with
/// `concat!`.
macro_rules! work_channel {
    () => {
        "nightshift_work"
    };
}
pub(crate) use work_channel;

/// The channel the store's writes notify on.
pub(crate) const WORK_CHANNEL: &str = work_channel!();

/// Notifies listeners at the commit of `tx` (several notices of one transaction are
/// delivered once).
pub(crate) fn notify(tx: &mut super::Tx<'_>) -> std::result::Result<(), postgres::Error> {
    tx.batch_execute(&format!("NOTIFY {WORK_CHANNEL}"))
}

/// How long the listener waits for a notice before it checks whether anybody still listens.
const LOOK: Duration = Duration::from_secs(1);

/// How long a failed connection waits before the next attempt.
const RETRY: Duration = Duration::from_secs(2);

/// Starts the listening thread; it ends once `watcher` stops listening.
pub(crate) fn start(pg: PgLocation, watcher: Box<dyn WorkWatcher>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("work-listener".into())
        .spawn(move || listen(&pg, &*watcher))?;
    Ok(())
}

fn listen(pg: &PgLocation, watcher: &dyn WorkWatcher) {
    let mut was_connected = false;
    while watcher.listening() {
        let mut client = match super::connect(pg, "the PostgreSQL store") {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "the work listener cannot connect; it tries again");
                pause(watcher, RETRY);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {WORK_CHANNEL}")) {
            debug!(error = %super::driver_message(&e), "the work listener cannot listen; it tries again");
            pause(watcher, RETRY);
            continue;
        }
        // Notices sent while no listener was connected are lost.
        if was_connected && !watcher.wake() {
            return;
        }
        was_connected = true;
        loop {
            let got = client.notifications().timeout_iter(LOOK).next();
            match got {
                Ok(Some(_)) => {
                    // Everything already here wakes the engine once.
                    while let Ok(Some(_)) = client.notifications().iter().next() {}
                    if !watcher.wake() {
                        return;
                    }
                }
                // A timeout, or the server closed the connection.
                Ok(None) => {
                    if !watcher.listening() {
                        return;
                    }
                    if client.is_closed() {
                        debug!("the work listener lost its connection; it reconnects");
                        break;
                    }
                }
                Err(e) => {
                    debug!(error = %super::driver_message(&e), "the work listener lost its connection; it reconnects");
                    break;
                }
            }
        }
    }
}

/// Sleeps up to `d`, returning early once nobody listens.
fn pause(watcher: &dyn WorkWatcher, d: Duration) {
    let until = Instant::now() + d;
    while watcher.listening() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
    }
}
