use std::path::Path;

use anyhow::{Context as _, Result};

use crate::commands::{parse_date_flag, usage};
use crate::output;
use crate::shop::{self, DayStats, Options};

/// Where the shop lives.
pub enum Target<'a> {
    Sqlite(&'a Path),
    /// A PostgreSQL URL; the password comes from PGPASSWORD, never from the command line.
    Postgres(String),
}

pub fn exec(target: Target<'_>, from: &str, to: &str, opts: Options, release: bool) -> Result<i32> {
    let from = parse_date_flag("--from", from)?;
    let to = parse_date_flag("--to", to)?;
    if to < from {
        return Err(usage(format!("--to {to} is before --from {from}")));
    }
    if opts.orders_per_day == 0 || opts.orders_per_day > 900_000 {
        return Err(usage("--orders must be between 1 and 900000"));
    }
    let mut days = vec![];
    let mut d = from;
    while d <= to {
        days.push(d);
        d = d.tomorrow()?;
    }
    let report = |d: jiff::civil::Date, s: Option<DayStats>| match s {
        None => output::line(format!("{d}: batch released")),
        Some(s) => output::line(format!(
            "{d}: {} orders, {} order items, {} payments, {} late updates{}",
            s.orders,
            s.order_items,
            s.payments,
            s.updated_orders,
            if opts.hold_batch { " (batch held)" } else { "" }
        )),
    };
    match target {
        Target::Sqlite(db) => {
            let mut conn = shop::open(db)?;
            for d in days {
                if release {
                    shop::release_batch(&conn, d)?;
                    report(d, None);
                } else {
                    report(d, Some(shop::generate_day(&mut conn, d, &opts)?));
                }
            }
        }
        Target::Postgres(url) => {
            if nightshift_core::project::url_has_password(&url) {
                return Err(usage(
                    "the URL holds a password, which would show in the process list; export PGPASSWORD instead",
                ));
            }
            let location = nightshift_store::PgLocation {
                url,
                password_env: None,
            };
            // The driver blocks on a runtime of its own: not on the command's.
            std::thread::scope(|s| {
                s.spawn(|| -> Result<()> {
                    let mut client =
                        nightshift_store::postgres::connect(&location, "the shop database")
                            .map_err(anyhow::Error::msg)?;
                    shop::open_postgres(&mut client)?;
                    for d in days {
                        if release {
                            shop::release_batch_postgres(&mut client, d)?;
                            report(d, None);
                        } else {
                            let stats = shop::generate_day_postgres(&mut client, d, &opts)
                                .with_context(|| format!("generating {d}"))?;
                            report(d, Some(stats));
                        }
                    }
                    Ok(())
                })
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the shop generator stopped unexpectedly")))
            })?;
        }
    }
    Ok(0)
}
