//! The reference pipeline's source system: a SQLite shop database filled day by day with
//! deterministic, realistic data (seeded by the date), plus a readiness signal per business
//! day (`source_batches`), so a pipeline has something real to extract and to wait for.
//!
//! Regenerating a day replaces exactly that day's rows: the data for a date is the same
//! whenever and however often it is generated.

use std::path::Path;

use anyhow::{Context as _, Result};
use jiff::civil::Date;
use rusqlite::{Connection, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    customer_id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, country TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    product_id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price_cents INTEGER NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, order_ts TEXT NOT NULL, status TEXT NOT NULL,
    updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_ts ON orders(order_ts);
CREATE INDEX IF NOT EXISTS orders_by_updated ON orders(updated_at);
CREATE TABLE IF NOT EXISTS order_items (
    order_id INTEGER NOT NULL, line_no INTEGER NOT NULL, product_id INTEGER NOT NULL, quantity INTEGER NOT NULL,
    unit_price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, line_no));
CREATE TABLE IF NOT EXISTS payments (
    payment_id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL, method TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    paid_ts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS payments_by_ts ON payments(paid_ts);
-- One row per business day, written when the day is complete: what a sensor waits for.
CREATE TABLE IF NOT EXISTS source_batches (
    business_date TEXT PRIMARY KEY, completed_at TEXT NOT NULL, orders INTEGER NOT NULL);
";

const COUNTRIES: &[&str] = &["DE", "FR", "NL", "US", "GB", "ES", "IT", "PL", "SE", "AT"];
const CATEGORIES: &[&str] = &[
    "books", "games", "garden", "kitchen", "music", "outdoor", "tools", "toys",
];
const METHODS: &[&str] = &["card", "card", "card", "paypal", "invoice"];
const BASE_CUSTOMERS: i64 = 5_000;
const PRODUCTS: i64 = 200;
/// Ids of a day's orders start at day_index * ORDER_ID_SPAN.
const ORDER_ID_SPAN: i64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct Options {
    /// Average orders per day; each day varies around it by ±10%.
    pub orders_per_day: u32,
    /// Leave the day's `source_batches` row out (the day is "not complete yet").
    pub hold_batch: bool,
    /// Add one payment with a negative amount (a bad source row).
    pub bad_row: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayStats {
    pub date: Date,
    pub orders: i64,
    pub order_items: i64,
    pub payments: i64,
    pub updated_orders: i64,
}

fn day_index(date: Date) -> i64 {
    let epoch = jiff::civil::date(2020, 1, 1);
    i64::from((date - epoch).get_days())
}

fn seed(date: Date, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ salt;
    for b in date.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn ts(date: Date, second_of_day: i64) -> String {
    format!(
        "{date}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

pub fn open(db: &Path) -> Result<Connection> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    }
    let conn = Connection::open(db)
        .with_context(|| format!("opening the shop database `{}`", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(SCHEMA)
        .context("creating the shop schema")?;
    Ok(conn)
}

/// Where a generated day goes: the shop's tables in SQLite or PostgreSQL. Rows arrive in
/// the generator's order, so a day is the same data on either.
trait Sink {
    /// Customers and products every day refers to, added when missing.
    fn reference(&mut self, customers: &[(i64, &str)], products: &[(i64, &str, i64)])
    -> Result<()>;
    /// Removes the day's orders, items, payments and batch (ids in `lo..hi`).
    fn clear_day(&mut self, lo: i64, hi: i64, date: &str) -> Result<()>;
    fn customer(&mut self, id: i64, country: &str, created: &str) -> Result<()>;
    fn order(&mut self, id: i64, customer: i64, at: &str, status: &str) -> Result<()>;
    fn item(&mut self, order: i64, line: i64, product: i64, qty: i64, price: i64) -> Result<()>;
    fn payment(&mut self, id: i64, order: i64, method: &str, amount: i64, at: &str) -> Result<()>;
    /// A later status of an earlier order (not of a cancelled one); whether it applied.
    fn late_update(&mut self, id: i64, status: &str, at: &str) -> Result<bool>;
    fn batch(&mut self, date: &str, completed: &str, orders: i64) -> Result<()>;
}

struct SqliteSink<'c>(rusqlite::Transaction<'c>);

impl Sink for SqliteSink<'_> {
    fn reference(
        &mut self,
        customers: &[(i64, &str)],
        products: &[(i64, &str, i64)],
    ) -> Result<()> {
        let mut cust = self.0.prepare_cached(
            "INSERT OR IGNORE INTO customers (customer_id, name, email, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, '2020-01-01T00:00:00Z', '2020-01-01T00:00:00Z')",
        )?;
        for (id, country) in customers {
            cust.execute(params![
                id,
                format!("Customer {id}"),
                format!("customer{id}@example.com"),
                country
            ])?;
        }
        let mut prod = self.0.prepare_cached(
            "INSERT OR IGNORE INTO products (product_id, name, category, price_cents, updated_at) VALUES (?1, ?2, ?3, ?4, '2020-01-01T00:00:00Z')",
        )?;
        for (id, category, price) in products {
            prod.execute(params![id, format!("Product {id}"), category, price])?;
        }
        Ok(())
    }

    fn clear_day(&mut self, lo: i64, hi: i64, date: &str) -> Result<()> {
        self.0.execute(
            "DELETE FROM order_items WHERE order_id >= ?1 AND order_id < ?2",
            params![lo, hi],
        )?;
        self.0.execute(
            "DELETE FROM payments WHERE payment_id >= ?1 AND payment_id < ?2",
            params![lo, hi],
        )?;
        self.0.execute(
            "DELETE FROM orders WHERE order_id >= ?1 AND order_id < ?2",
            params![lo, hi],
        )?;
        self.0.execute(
            "DELETE FROM source_batches WHERE business_date = ?1",
            params![date],
        )?;
        Ok(())
    }

    fn customer(&mut self, id: i64, country: &str, created: &str) -> Result<()> {
        self.0.prepare_cached(
            "INSERT OR REPLACE INTO customers (customer_id, name, email, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute(params![id, format!("Customer {id}"), format!("customer{id}@example.com"), country, created])?;
        Ok(())
    }

    fn order(&mut self, id: i64, customer: i64, at: &str, status: &str) -> Result<()> {
        self.0.prepare_cached("INSERT INTO orders (order_id, customer_id, order_ts, status, updated_at) VALUES (?1, ?2, ?3, ?4, ?3)")?
            .execute(params![id, customer, at, status])?;
        Ok(())
    }

    fn item(&mut self, order: i64, line: i64, product: i64, qty: i64, price: i64) -> Result<()> {
        self.0.prepare_cached(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price_cents) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![order, line, product, qty, price])?;
        Ok(())
    }

    fn payment(&mut self, id: i64, order: i64, method: &str, amount: i64, at: &str) -> Result<()> {
        self.0.prepare_cached("INSERT INTO payments (payment_id, order_id, method, amount_cents, paid_ts) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![id, order, method, amount, at])?;
        Ok(())
    }

    fn late_update(&mut self, id: i64, status: &str, at: &str) -> Result<bool> {
        Ok(self.0.prepare_cached("UPDATE orders SET status = ?2, updated_at = ?3 WHERE order_id = ?1 AND status != 'cancelled'")?
            .execute(params![id, status, at])? > 0)
    }

    fn batch(&mut self, date: &str, completed: &str, orders: i64) -> Result<()> {
        self.0.execute(
            "INSERT OR REPLACE INTO source_batches (business_date, completed_at, orders) VALUES (?1, ?2, ?3)",
            params![date, completed, orders],
        )?;
        Ok(())
    }
}

/// The same tables on PostgreSQL, with its types (timestamps, dates).
const PG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    customer_id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, country text NOT NULL,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    product_id bigint PRIMARY KEY, name text NOT NULL, category text NOT NULL, price_cents bigint NOT NULL,
    updated_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    order_id bigint PRIMARY KEY, customer_id bigint NOT NULL, order_ts timestamptz NOT NULL, status text NOT NULL,
    updated_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS orders_by_ts ON orders(order_ts);
CREATE TABLE IF NOT EXISTS order_items (
    order_id bigint NOT NULL, line_no bigint NOT NULL, product_id bigint NOT NULL, quantity bigint NOT NULL,
    unit_price_cents bigint NOT NULL, PRIMARY KEY (order_id, line_no));
CREATE TABLE IF NOT EXISTS payments (
    payment_id bigint PRIMARY KEY, order_id bigint NOT NULL, method text NOT NULL, amount_cents bigint NOT NULL,
    paid_ts timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS payments_by_ts ON payments(paid_ts);
CREATE TABLE IF NOT EXISTS source_batches (
    business_date date PRIMARY KEY, completed_at timestamptz NOT NULL, orders bigint NOT NULL);
";

/// One day's writes on PostgreSQL, each statement prepared once.
struct PgSink<'c> {
    tx: postgres::Transaction<'c>,
    prepared: std::collections::HashMap<&'static str, postgres::Statement>,
}

impl PgSink<'_> {
    fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        if !self.prepared.contains_key(sql) {
            let st = self.tx.prepare(sql)?;
            self.prepared.insert(sql, st);
        }
        Ok(self.tx.execute(&self.prepared[sql], params)?)
    }
}

impl Sink for PgSink<'_> {
    fn reference(
        &mut self,
        customers: &[(i64, &str)],
        products: &[(i64, &str, i64)],
    ) -> Result<()> {
        let ids: Vec<i64> = customers.iter().map(|c| c.0).collect();
        let countries: Vec<&str> = customers.iter().map(|c| c.1).collect();
        self.exec(
            "INSERT INTO customers SELECT id, 'Customer ' || id, 'customer' || id || '@example.com', country,
                 '2020-01-01T00:00:00Z', '2020-01-01T00:00:00Z'
             FROM unnest($1::bigint[], $2::text[]) AS u(id, country) ON CONFLICT DO NOTHING",
            &[&ids, &countries],
        )?;
        let ids: Vec<i64> = products.iter().map(|p| p.0).collect();
        let categories: Vec<&str> = products.iter().map(|p| p.1).collect();
        let prices: Vec<i64> = products.iter().map(|p| p.2).collect();
        self.exec(
            "INSERT INTO products SELECT id, 'Product ' || id, category, price, '2020-01-01T00:00:00Z'
             FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(id, category, price) ON CONFLICT DO NOTHING",
            &[&ids, &categories, &prices],
        )?;
        Ok(())
    }

    fn clear_day(&mut self, lo: i64, hi: i64, date: &str) -> Result<()> {
        self.exec(
            "DELETE FROM order_items WHERE order_id >= $1 AND order_id < $2",
            &[&lo, &hi],
        )?;
        self.exec(
            "DELETE FROM payments WHERE payment_id >= $1 AND payment_id < $2",
            &[&lo, &hi],
        )?;
        self.exec(
            "DELETE FROM orders WHERE order_id >= $1 AND order_id < $2",
            &[&lo, &hi],
        )?;
        self.exec(
            "DELETE FROM source_batches WHERE business_date = $1::text::date",
            &[&date],
        )?;
        Ok(())
    }

    fn customer(&mut self, id: i64, country: &str, created: &str) -> Result<()> {
        self.exec(
            "INSERT INTO customers VALUES ($1::bigint, 'Customer ' || $1::bigint, 'customer' || $1::bigint || '@example.com', $2, $3::text::timestamptz, $3::text::timestamptz)
             ON CONFLICT (customer_id) DO UPDATE SET country = EXCLUDED.country, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at",
            &[&id, &country, &created],
        )?;
        Ok(())
    }

    fn order(&mut self, id: i64, customer: i64, at: &str, status: &str) -> Result<()> {
        self.exec(
            "INSERT INTO orders VALUES ($1, $2, $3::text::timestamptz, $4, $3::text::timestamptz)",
            &[&id, &customer, &at, &status],
        )?;
        Ok(())
    }

    fn item(&mut self, order: i64, line: i64, product: i64, qty: i64, price: i64) -> Result<()> {
        self.exec(
            "INSERT INTO order_items VALUES ($1, $2, $3, $4, $5)",
            &[&order, &line, &product, &qty, &price],
        )?;
        Ok(())
    }

    fn payment(&mut self, id: i64, order: i64, method: &str, amount: i64, at: &str) -> Result<()> {
        self.exec(
            "INSERT INTO payments VALUES ($1, $2, $3, $4, $5::text::timestamptz)",
            &[&id, &order, &method, &amount, &at],
        )?;
        Ok(())
    }

    fn late_update(&mut self, id: i64, status: &str, at: &str) -> Result<bool> {
        Ok(self.exec(
            "UPDATE orders SET status = $2, updated_at = $3::text::timestamptz WHERE order_id = $1 AND status != 'cancelled'",
            &[&id, &status, &at],
        )? > 0)
    }

    fn batch(&mut self, date: &str, completed: &str, orders: i64) -> Result<()> {
        self.exec(
            "INSERT INTO source_batches VALUES ($1::text::date, $2::text::timestamptz, $3)
             ON CONFLICT (business_date) DO UPDATE SET completed_at = EXCLUDED.completed_at, orders = EXCLUDED.orders",
            &[&date, &completed, &orders],
        )?;
        Ok(())
    }
}

/// Creates the shop's tables in a PostgreSQL database when they are missing.
pub fn open_postgres(client: &mut postgres::Client) -> Result<()> {
    client
        .batch_execute(PG_SCHEMA)
        .context("creating the shop schema in PostgreSQL")
}

/// Generates (or regenerates) one business day in a PostgreSQL database: the same rows as
/// in SQLite.
pub fn generate_day_postgres(
    client: &mut postgres::Client,
    date: Date,
    opts: &Options,
) -> Result<DayStats> {
    let mut sink = PgSink {
        tx: client.transaction()?,
        prepared: Default::default(),
    };
    let stats = generate(&mut sink, date, opts)?;
    sink.tx.commit()?;
    Ok(stats)
}

/// Marks a held day complete in a PostgreSQL database.
pub fn release_batch_postgres(client: &mut postgres::Client, date: Date) -> Result<()> {
    let lo = day_index(date) * ORDER_ID_SPAN;
    let mut sink = PgSink {
        tx: client.transaction()?,
        prepared: Default::default(),
    };
    let n: i64 = sink
        .tx
        .query_one(
            "SELECT COUNT(*) FROM orders WHERE order_id >= $1 AND order_id < $2",
            &[&lo, &(lo + ORDER_ID_SPAN)],
        )?
        .get(0);
    sink.batch(
        &date.to_string(),
        &ts(date.tomorrow().unwrap_or(date), 300),
        n,
    )?;
    sink.tx.commit()?;
    Ok(())
}

/// Generates (or regenerates) one business day.
pub fn generate_day(conn: &mut Connection, date: Date, opts: &Options) -> Result<DayStats> {
    let mut sink = SqliteSink(conn.transaction()?);
    let stats = generate(&mut sink, date, opts)?;
    sink.0.commit()?;
    Ok(stats)
}

/// The day's rows, in a fixed order from a seed of the date.
fn generate(sink: &mut dyn Sink, date: Date, opts: &Options) -> Result<DayStats> {
    let day = day_index(date);
    let mut rng = fastrand::Rng::with_seed(seed(date, 1));
    // Reference data: the same for every day, inserted once.
    let mut base = fastrand::Rng::with_seed(7);
    let customers: Vec<(i64, &str)> = (1..=BASE_CUSTOMERS)
        .map(|id| (id, COUNTRIES[base.usize(..COUNTRIES.len())]))
        .collect();
    let products: Vec<(i64, &str, i64)> = (1..=PRODUCTS)
        .map(|id| {
            (
                id,
                CATEGORIES[(id as usize) % CATEGORIES.len()],
                199 + (id * 7919) % 9800,
            )
        })
        .collect();
    sink.reference(&customers, &products)?;
    // Replace this day's rows.
    let lo = day * ORDER_ID_SPAN;
    let hi = lo + ORDER_ID_SPAN;
    sink.clear_day(lo, hi, &date.to_string())?;
    // A few new customers each day.
    let new_customers = 20;
    for k in 0..new_customers {
        let id = 1_000_000 + day * 100 + k;
        let created = ts(date, rng.i64(0..86_400));
        sink.customer(id, COUNTRIES[rng.usize(..COUNTRIES.len())], &created)?;
    }
    let spread = i64::from(opts.orders_per_day) / 10;
    let n = (i64::from(opts.orders_per_day) + rng.i64(-spread..=spread)).max(1);
    let (mut items_n, mut payments_n) = (0, 0);
    for i in 0..n {
        let order_id = lo + i;
        let at = rng.i64(0..86_400);
        let customer = if rng.u8(..100) < 10 {
            1_000_000 + day * 100 + rng.i64(0..new_customers)
        } else {
            rng.i64(1..=BASE_CUSTOMERS)
        };
        let status = match rng.u8(..100) {
            0..=4 => "cancelled",
            5..=19 => "shipped",
            _ => "placed",
        };
        sink.order(order_id, customer, &ts(date, at), status)?;
        let mut total = 0;
        for line in 1..=rng.i64(1..=4) {
            let product = rng.i64(1..=PRODUCTS);
            let qty = rng.i64(1..=3);
            let price = 199 + (product * 7919) % 9800;
            total += qty * price;
            sink.item(order_id, line, product, qty, price)?;
            items_n += 1;
        }
        if status != "cancelled" {
            let paid = (at + rng.i64(0..600)).min(86_399);
            sink.payment(
                order_id,
                order_id,
                METHODS[rng.usize(..METHODS.len())],
                total,
                &ts(date, paid),
            )?;
            payments_n += 1;
        }
    }
    if opts.bad_row {
        // A refund booked as a negative payment: the kind of row a data test must catch.
        sink.payment(hi - 1, lo, "card", -1234, &ts(date, 43_200))?;
        payments_n += 1;
    }
    // Late-arriving updates: some of yesterday's orders change status today.
    let prev_lo = (day - 1) * ORDER_ID_SPAN;
    let mut late = fastrand::Rng::with_seed(seed(date, 2));
    let mut updated = 0;
    for _ in 0..(n / 100) {
        let id = prev_lo + late.i64(0..n);
        let status = if late.bool() { "shipped" } else { "returned" };
        if sink.late_update(id, status, &ts(date, late.i64(0..86_400)))? {
            updated += 1;
        }
    }
    if !opts.hold_batch {
        sink.batch(
            &date.to_string(),
            &ts(date.tomorrow().unwrap_or(date), 300),
            n,
        )?;
    }
    Ok(DayStats {
        date,
        orders: n,
        order_items: items_n,
        payments: payments_n,
        updated_orders: updated,
    })
}

/// Marks a held day complete (the batch "arrives").
pub fn release_batch(conn: &Connection, date: Date) -> Result<()> {
    let lo = day_index(date) * ORDER_ID_SPAN;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM orders WHERE order_id >= ?1 AND order_id < ?2",
        params![lo, lo + ORDER_ID_SPAN],
        |r| r.get(0),
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO source_batches (business_date, completed_at, orders) VALUES (?1, ?2, ?3)",
        params![date.to_string(), ts(date.tomorrow().unwrap_or(date), 300), n],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            orders_per_day: 500,
            hold_batch: false,
            bad_row: false,
        }
    }

    fn dump(conn: &Connection) -> Vec<(i64, String, String)> {
        let mut s = conn
            .prepare("SELECT order_id, order_ts, status FROM orders ORDER BY order_id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn a_day_is_deterministic_and_regenerating_it_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(&dir.path().join("a.db")).unwrap();
        let mut b = open(&dir.path().join("b.db")).unwrap();
        let d = jiff::civil::date(2024, 6, 1);
        let s1 = generate_day(&mut a, d, &opts()).unwrap();
        let s2 = generate_day(&mut a, d, &opts()).unwrap();
        let s3 = generate_day(&mut b, d, &opts()).unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1, s3);
        assert!((450..=550).contains(&s1.orders), "{s1:?}");
        assert_eq!(dump(&a), dump(&b));
        let count: i64 = a
            .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, s1.orders, "regenerating does not add rows");
        let batches: i64 = a
            .query_row("SELECT COUNT(*) FROM source_batches", [], |r| r.get(0))
            .unwrap();
        assert_eq!(batches, 1);
    }

    #[test]
    fn late_updates_touch_the_previous_day_and_batches_can_be_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("s.db")).unwrap();
        generate_day(&mut c, jiff::civil::date(2024, 6, 1), &opts()).unwrap();
        let s = generate_day(
            &mut c,
            jiff::civil::date(2024, 6, 2),
            &Options {
                hold_batch: true,
                ..opts()
            },
        )
        .unwrap();
        assert!(s.updated_orders > 0, "{s:?}");
        let late: i64 = c
            .query_row("SELECT COUNT(*) FROM orders WHERE order_ts < '2024-06-02' AND updated_at >= '2024-06-02'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(late, s.updated_orders);
        let held: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM source_batches WHERE business_date = '2024-06-02'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(held, 0);
        release_batch(&c, jiff::civil::date(2024, 6, 2)).unwrap();
        let orders: i64 = c
            .query_row(
                "SELECT orders FROM source_batches WHERE business_date = '2024-06-02'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orders, s.orders);
    }

    #[test]
    fn a_bad_row_is_a_negative_payment() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(&dir.path().join("s.db")).unwrap();
        generate_day(
            &mut c,
            jiff::civil::date(2024, 6, 1),
            &Options {
                bad_row: true,
                ..opts()
            },
        )
        .unwrap();
        let neg: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM payments WHERE amount_cents < 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(neg, 1);
    }
}
