use std::path::Path;

use anyhow::Result;

use crate::commands::{parse_date_flag, usage};
use crate::output;
use crate::shop::{self, Options};

pub fn exec(db: &Path, from: &str, to: &str, opts: Options, release: bool) -> Result<i32> {
    let from = parse_date_flag("--from", from)?;
    let to = parse_date_flag("--to", to)?;
    if to < from {
        return Err(usage(format!("--to {to} is before --from {from}")));
    }
    if opts.orders_per_day == 0 || opts.orders_per_day > 900_000 {
        return Err(usage("--orders must be between 1 and 900000"));
    }
    let mut conn = shop::open(db)?;
    let mut d = from;
    while d <= to {
        if release {
            shop::release_batch(&conn, d)?;
            output::line(format!("{d}: batch released"));
        } else {
            let s = shop::generate_day(&mut conn, d, &opts)?;
            output::line(format!(
                "{d}: {} orders, {} order items, {} payments, {} late updates{}",
                s.orders,
                s.order_items,
                s.payments,
                s.updated_orders,
                if opts.hold_batch { " (batch held)" } else { "" }
            ));
        }
        d = d.tomorrow()?;
    }
    Ok(0)
}
