//! The `sensor` kind: waits for a condition of the run's interval (a query on a connection,
//! or a path), poking at an interval and holding no slot in between.

use std::time::Duration;

use super::{Def, TaskKind};
use crate::diag::Diagnostic;
use crate::pipeline::{TriggerRule, check_connection, check_sql_params, check_template};
use crate::project::ProjectSettings;
use crate::run::RunKeys;
use crate::time;
use crate::toml_reader::TableReader;

/// What a sensor waits for, for the run's interval.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorCondition {
    /// True when the query's first column of its first row is neither NULL, 0 nor ''.
    /// Bound parameters as for extracts.
    Sql { connection: String, sql: String },
    /// True when the path (templated, relative to the project) exists.
    Path { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorSpec {
    pub condition: SensorCondition,
    /// Between pokes the task holds no slot.
    pub poke_interval: Duration,
}

/// What the engine hands a sensor poke (`nightshift __sensor REQUEST`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SensorRequest {
    /// Connection paths and the condition path made absolute, templates rendered.
    pub condition: SensorCondition,
    pub connection: Option<crate::project::Connection>,
    pub keys: RunKeys,
}

/// Exit code of a sensor poke whose condition is not true yet (EX_TEMPFAIL).
pub const SENSOR_NOT_YET: i32 = 75;

fn read_spec(
    r: &TableReader<'_, '_>,
    id: &str,
    settings: &ProjectSettings,
    diags: &mut Vec<Diagnostic>,
) -> Option<SensorSpec> {
    let connection = r.string("connection", diags);
    let sql = r.string("sql", diags);
    let path = r.string("path", diags);
    let condition = match (connection, sql, path) {
        (Some(c), Some(q), None) => {
            check_connection(&c, id, settings, diags);
            check_sql_params(&q, diags);
            SensorCondition::Sql {
                connection: c.value,
                sql: q.value,
            }
        }
        (None, None, Some(p)) => {
            check_template(&p.value, &p.span, diags);
            SensorCondition::Path { path: p.value }
        }
        _ => {
            diags.push(
                Diagnostic::error(format!("sensor `{id}` needs either `connection` and `sql`, or `path`"), Some(r.span()))
                    .with_help("e.g. `connection = \"shop\"` and `sql = \"SELECT COUNT(*) FROM source_batches WHERE business_date = :ds\"`"),
            );
            return None;
        }
    };
    let poke_interval = match r.string("poke_interval", diags) {
        Some(v) => match time::parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                diags.push(
                    Diagnostic::error(
                        format!("invalid duration `{}` for `poke_interval`", v.value),
                        Some(v.span),
                    )
                    .with_help("e.g. `30s` or `5m`"),
                );
                Duration::from_secs(60)
            }
        },
        None => Duration::from_secs(60),
    };
    Some(SensorSpec {
        condition,
        poke_interval,
    })
}

pub(crate) const DEF: Def = Def {
    name: "sensor",
    keys: &["connection", "sql", "path", "poke_interval"],
    trigger_rule: TriggerRule::AllSuccess,
    read: |r, id, settings, diags| read_spec(r, id, settings, diags).map(TaskKind::Sensor),
};

impl SensorCondition {
    /// What the sensor waits for, in words.
    pub fn describe(&self) -> String {
        match self {
            SensorCondition::Sql { connection, sql } => format!("`{sql}` on `{connection}`"),
            SensorCondition::Path { path } => format!("`{path}` to exist"),
        }
    }
}
