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

/// Generates (or regenerates) one business day.
pub fn generate_day(conn: &mut Connection, date: Date, opts: &Options) -> Result<DayStats> {
    let day = day_index(date);
    let mut rng = fastrand::Rng::with_seed(seed(date, 1));
    let tx = conn.transaction()?;
    // Reference data: the same for every day, inserted once.
    {
        let mut cust = tx.prepare_cached(
            "INSERT OR IGNORE INTO customers (customer_id, name, email, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?;
        let mut base = fastrand::Rng::with_seed(7);
        for id in 1..=BASE_CUSTOMERS {
            let country = COUNTRIES[base.usize(..COUNTRIES.len())];
            cust.execute(params![
                id,
                format!("Customer {id}"),
                format!("customer{id}@example.com"),
                country,
                "2020-01-01T00:00:00Z"
            ])?;
        }
        let mut prod = tx.prepare_cached(
            "INSERT OR IGNORE INTO products (product_id, name, category, price_cents, updated_at) VALUES (?1, ?2, ?3, ?4, '2020-01-01T00:00:00Z')",
        )?;
        for id in 1..=PRODUCTS {
            prod.execute(params![
                id,
                format!("Product {id}"),
                CATEGORIES[(id as usize) % CATEGORIES.len()],
                199 + (id * 7919) % 9800
            ])?;
        }
    }
    // Replace this day's rows.
    let lo = day * ORDER_ID_SPAN;
    let hi = lo + ORDER_ID_SPAN;
    tx.execute(
        "DELETE FROM order_items WHERE order_id >= ?1 AND order_id < ?2",
        params![lo, hi],
    )?;
    tx.execute(
        "DELETE FROM payments WHERE payment_id >= ?1 AND payment_id < ?2",
        params![lo, hi],
    )?;
    tx.execute(
        "DELETE FROM orders WHERE order_id >= ?1 AND order_id < ?2",
        params![lo, hi],
    )?;
    tx.execute(
        "DELETE FROM source_batches WHERE business_date = ?1",
        params![date.to_string()],
    )?;

    // A few new customers each day.
    let new_customers = 20;
    {
        let mut cust = tx.prepare_cached(
            "INSERT OR REPLACE INTO customers (customer_id, name, email, country, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?;
        for k in 0..new_customers {
            let id = 1_000_000 + day * 100 + k;
            let created = ts(date, rng.i64(0..86_400));
            cust.execute(params![
                id,
                format!("Customer {id}"),
                format!("customer{id}@example.com"),
                COUNTRIES[rng.usize(..COUNTRIES.len())],
                created
            ])?;
        }
    }

    let spread = i64::from(opts.orders_per_day) / 10;
    let n = (i64::from(opts.orders_per_day) + rng.i64(-spread..=spread)).max(1);
    let (mut items_n, mut payments_n) = (0, 0);
    {
        let mut ord = tx.prepare_cached("INSERT INTO orders (order_id, customer_id, order_ts, status, updated_at) VALUES (?1, ?2, ?3, ?4, ?3)")?;
        let mut item = tx.prepare_cached(
            "INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price_cents) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut pay = tx.prepare_cached("INSERT INTO payments (payment_id, order_id, method, amount_cents, paid_ts) VALUES (?1, ?2, ?3, ?4, ?5)")?;
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
            ord.execute(params![order_id, customer, ts(date, at), status])?;
            let mut total = 0;
            for line in 1..=rng.i64(1..=4) {
                let product = rng.i64(1..=PRODUCTS);
                let qty = rng.i64(1..=3);
                let price = 199 + (product * 7919) % 9800;
                total += qty * price;
                item.execute(params![order_id, line, product, qty, price])?;
                items_n += 1;
            }
            if status != "cancelled" {
                let paid = (at + rng.i64(0..600)).min(86_399);
                pay.execute(params![
                    order_id,
                    order_id,
                    METHODS[rng.usize(..METHODS.len())],
                    total,
                    ts(date, paid)
                ])?;
                payments_n += 1;
            }
        }
    }
    if opts.bad_row {
        // A refund booked as a negative payment: the kind of row a data test must catch.
        tx.execute(
            "INSERT INTO payments (payment_id, order_id, method, amount_cents, paid_ts) VALUES (?1, ?2, 'card', -1234, ?3)",
            params![hi - 1, lo, ts(date, 43_200)],
        )?;
        payments_n += 1;
    }
    // Late-arriving updates: some of yesterday's orders change status today.
    let prev_lo = (day - 1) * ORDER_ID_SPAN;
    let mut late = fastrand::Rng::with_seed(seed(date, 2));
    let mut updated = 0;
    {
        let mut upd = tx.prepare_cached("UPDATE orders SET status = ?2, updated_at = ?3 WHERE order_id = ?1 AND status != 'cancelled'")?;
        for _ in 0..(n / 100) {
            let id = prev_lo + late.i64(0..n);
            updated += upd.execute(params![
                id,
                if late.bool() { "shipped" } else { "returned" },
                ts(date, late.i64(0..86_400))
            ])? as i64;
        }
    }
    if !opts.hold_batch {
        tx.execute(
            "INSERT INTO source_batches (business_date, completed_at, orders) VALUES (?1, ?2, ?3)",
            params![
                date.to_string(),
                ts(date.tomorrow().unwrap_or(date), 300),
                n
            ],
        )?;
    }
    tx.commit()?;
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
