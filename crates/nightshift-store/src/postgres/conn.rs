//! Pooled connections that keep their prepared statements.
//!
//! The driver's `query(&str, …)` prepares the statement, runs it and closes it: three
//! messages to the server and a fresh parse and plan every time. Every engine asks the same
//! few dozen statements over and over (a wide run's claims, outcomes and passes), so each
//! connection prepares a statement once and runs it by name from then on, and the server
//! reuses its plan. [`Conn`] and [`Tx`] have the driver's method names, so the store's code
//! reads as plain driver calls and gets the cache without saying so.
//!
//! Prepared statements live as long as the server session: a connection dropped by the pool
//! (a restart, an idle timeout) takes its cache with it.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use postgres::types::ToSql;
use postgres::{GenericClient, Row, Statement, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

pub(crate) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// A server session and the statements prepared on it, keyed by their text.
pub struct Conn {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
    /// When the pool last proved the session alive (see [`Manager::is_valid`]).
    checked: Instant,
}

/// How long a proven session is trusted without asking the server again.
const TRUSTED_FOR: Duration = Duration::from_secs(1);

/// One transaction on a [`Conn`], preparing through the connection's cache.
pub struct Tx<'a> {
    tx: Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
}

/// Runs `f` with `sql` prepared on `c`, preparing it on first use.
fn cached<C: GenericClient, T>(
    c: &mut C,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
    f: impl FnOnce(&mut C, &Statement) -> Result<T, postgres::Error>,
) -> Result<T, postgres::Error> {
    if !statements.contains_key(sql) {
        let st = c.prepare(sql)?;
        statements.insert(sql.to_owned(), st);
    }
    f(c, &statements[sql])
}

/// The driver's reading methods, taking the statement's text and running it prepared.
macro_rules! through_cache {
    ($client:ident) => {
        pub fn query(
            &mut self,
            sql: &str,
            params: Params<'_>,
        ) -> Result<Vec<Row>, postgres::Error> {
            cached(&mut self.$client, &mut self.statements, sql, |c, st| {
                c.query(st, params)
            })
        }

        pub fn query_opt(
            &mut self,
            sql: &str,
            params: Params<'_>,
        ) -> Result<Option<Row>, postgres::Error> {
            cached(&mut self.$client, &mut self.statements, sql, |c, st| {
                c.query_opt(st, params)
            })
        }

        pub fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
            cached(&mut self.$client, &mut self.statements, sql, |c, st| {
                c.query_one(st, params)
            })
        }
    };
}

impl Conn {
    /// Begins a transaction whose statements go through this connection's cache.
    pub fn begin(&mut self) -> Result<Tx<'_>, postgres::Error> {
        let Conn {
            client, statements, ..
        } = self;
        Ok(Tx {
            tx: client.transaction()?,
            statements,
        })
    }

    through_cache!(client);
}

impl Deref for Conn {
    type Target = postgres::Client;

    fn deref(&self) -> &postgres::Client {
        &self.client
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

impl Tx<'_> {
    pub fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }

    through_cache!(tx);

    pub fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        cached(&mut self.tx, self.statements, sql, |c, st| {
            c.execute(st, params)
        })
    }
}

impl<'a> Deref for Tx<'a> {
    type Target = Transaction<'a>;

    fn deref(&self) -> &Transaction<'a> {
        &self.tx
    }
}

impl<'a> DerefMut for Tx<'a> {
    fn deref_mut(&mut self) -> &mut Transaction<'a> {
        &mut self.tx
    }
}

/// The pool's manager: the driver's, with a statement cache per connection.
pub struct Manager(pub PostgresConnectionManager<MakeRustlsConnect>);

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        Ok(Conn {
            client: self.0.connect()?,
            statements: HashMap::new(),
            checked: Instant::now(),
        })
    }

    /// A round trip at each checkout was a third of all the statements a busy engine sent.
    /// A session proven within the last second is handed out as is: if the server went
    /// away since, the call fails as a transient error (as it could right after a check),
    /// and the pool drops the closed session when it comes back.
    fn is_valid(&self, c: &mut Conn) -> Result<(), postgres::Error> {
        if c.checked.elapsed() < TRUSTED_FOR && !c.client.is_closed() {
            return Ok(());
        }
        self.0.is_valid(&mut c.client)?;
        c.checked = Instant::now();
        Ok(())
    }

    fn has_broken(&self, c: &mut Conn) -> bool {
        self.0.has_broken(&mut c.client)
    }
}
