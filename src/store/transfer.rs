//! `tessera storage migrate-tier`: copy every table of one tessera database into another, for
//! moving from the embedded database (tier local) to an external Postgres (standalone or
//! federated).
//!
//! - **Which tables, in which order.** Derived from the source catalog at run time, never from a
//!   hand-kept list: every ordinary table of the schemas tessera owns ([`SCHEMAS`]: `public`,
//!   and `queue` and `outbox`, whose pending jobs, webhook endpoints and undelivered events must
//!   move too) except sqlx's `_sqlx_migrations` and the diagnostic `queue.diag_runs`, sorted so that a
//!   table comes after every table it references (self references are ignored; a foreign-key
//!   cycle is reported as an error rather than guessed around). New tables added by later
//!   migrations are copied without touching this file.
//! - **Schema.** The target is migrated with the same embedded migrations first, so both sides
//!   have the same columns; rows are then copied by column name.
//! - **Idempotent.** Rows travel as JSON (`to_jsonb` on the source, `jsonb_populate_recordset` on
//!   the target, so every type round-trips through its own text form: uuid, bytea, arrays,
//!   pgvector) and land with `insert ... on conflict (<primary key>) do update ... where
//!   <row> is distinct from excluded`. A re-run therefore writes nothing and reports 0 changed
//!   rows. Identity columns are copied with `overriding system value` and their sequences moved
//!   past the copied maximum.
//! - **Safe by default.** A target holding any row is refused unless `allow_non_empty`; dry runs
//!   write nothing (not even migrations). At the end, row counts are compared table by table: the
//!   target must hold exactly the source's rows (at least as many when merging into a non-empty
//!   target).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::PgPool;

/// Rows per insert statement.
const BATCH: usize = 500;

/// The schemas whose tables are copied.
pub const SCHEMAS: [&str; 3] = ["public", "queue", "outbox"];

/// Tables that are not copied: sqlx's bookkeeping (the target is migrated by itself) and the
/// record of diagnostic job runs, which has no primary key and no meaning on another server.
const SKIPPED: [&str; 2] = ["public._sqlx_migrations", "queue.diag_runs"];

/// What one table's copy did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableReport {
    pub table: String,
    pub source_rows: i64,
    /// Rows inserted or updated on the target (0 on an idempotent re-run).
    pub changed_rows: u64,
    pub target_rows: i64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferReport {
    pub dry_run: bool,
    pub target_was_empty: bool,
    pub tables: Vec<TableReport>,
}

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOptions {
    pub dry_run: bool,
    pub allow_non_empty: bool,
    /// Draw progress bars on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// A table with its columns and primary key.
#[derive(Debug, Clone)]
struct TableInfo {
    name: String,
    columns: Vec<String>,
    primary_key: Vec<String>,
    identity: Vec<String>,
}

/// Ordinary and partitioned tables of [`SCHEMAS`] (without [`SKIPPED`]), parents before
/// children; partitions are copied through their partitioned table, never on their own. Tables of
/// `public` are named bare (`tasks`), the others qualified (`outbox.deliveries`).
///
/// # Errors
/// The catalog cannot be read, or the foreign keys form a cycle.
pub async fn tables_in_fk_order(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    // Catalog names are of type `name`; compared as text so the parameters are text arrays.
    let tables = sqlx::query_scalar!(
        r#"select case when n.nspname = 'public' then c.relname::text else n.nspname || '.' || c.relname end as "table!"
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname::text = any($1::text[]) and c.relkind in ('r', 'p')
             and not (n.nspname || '.' || c.relname = any($2::text[]))
             and not c.relispartition
           order by n.nspname <> 'public', n.nspname, c.relname"#,
        &SCHEMAS[..] as &[&str],
        &SKIPPED[..] as &[&str],
    )
    .fetch_all(pool)
    .await?;
    let edges: Vec<(String, String)> = sqlx::query!(
        r#"select case when cn.nspname = 'public' then child.relname::text else cn.nspname || '.' || child.relname end as "child!",
                  case when pn.nspname = 'public' then parent.relname::text else pn.nspname || '.' || parent.relname end as "parent!"
           from pg_constraint k
           join pg_class child on child.oid = k.conrelid
           join pg_namespace cn on cn.oid = child.relnamespace
           join pg_class parent on parent.oid = k.confrelid
           join pg_namespace pn on pn.oid = parent.relnamespace
           where k.contype = 'f' and cn.nspname::text = any($1::text[])"#,
        &SCHEMAS[..] as &[&str],
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.child, r.parent))
    .collect();
    topological(&tables, &edges)
}

/// `(schema, table)` of a name as [`tables_in_fk_order`] gives it.
fn split(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("public", table))
}

/// Kahn's algorithm, alphabetical among ready tables so the order is stable.
fn topological(tables: &[String], edges: &[(String, String)]) -> anyhow::Result<Vec<String>> {
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = tables.iter().map(|t| (t.as_str(), BTreeSet::new())).collect();
    for (child, parent) in edges {
        if child != parent
            && parents.contains_key(parent.as_str())
            && let Some(p) = parents.get_mut(child.as_str())
        {
            p.insert(parent.as_str());
        }
    }
    let mut order = Vec::with_capacity(tables.len());
    while !parents.is_empty() {
        let ready: Vec<&str> = parents.iter().filter(|(_, p)| p.is_empty()).map(|(t, _)| *t).collect();
        if ready.is_empty() {
            bail!("foreign keys form a cycle among: {}", parents.keys().copied().collect::<Vec<_>>().join(", "));
        }
        for t in ready {
            parents.remove(t);
            for p in parents.values_mut() {
                p.remove(t);
            }
            order.push(t.to_string());
        }
    }
    Ok(order)
}

async fn table_info(pool: &PgPool, table: &str) -> anyhow::Result<TableInfo> {
    let (schema, name) = split(table);
    // information_schema's columns are domains over text; compared as text.
    let columns: Vec<(String, bool)> = sqlx::query!(
        r#"select column_name::text as "column!", is_identity::text = 'YES' as "identity!"
           from information_schema.columns
           where table_schema::text = $1::text and table_name::text = $2::text and is_generated::text = 'NEVER'
           order by ordinal_position"#,
        schema,
        name,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| (r.column, r.identity))
    .collect();
    let primary_key = sqlx::query_scalar!(
        r#"select a.attname::text as "column!" from pg_index i
           join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
           where i.indrelid = $1::text::regclass and i.indisprimary
           order by array_position(i.indkey::int2[], a.attnum)"#,
        quote(table),
    )
    .fetch_all(pool)
    .await?;
    if primary_key.is_empty() {
        bail!("table {table} has no primary key, so it cannot be copied idempotently");
    }
    Ok(TableInfo {
        name: table.to_string(),
        identity: columns.iter().filter(|(_, id)| *id).map(|(c, _)| c.clone()).collect(),
        columns: columns.into_iter().map(|(c, _)| c).collect(),
        primary_key,
    })
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A table name as [`tables_in_fk_order`] gives it, quoted and schema-qualified for SQL.
fn quote(table: &str) -> String {
    let (schema, name) = split(table);
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn upsert_sql(t: &TableInfo) -> String {
    let cols = t.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let pk = t.primary_key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let others: Vec<&String> = t.columns.iter().filter(|c| !t.primary_key.contains(c)).collect();
    let overriding = if t.identity.is_empty() { "" } else { " overriding system value" };
    let table = quote(&t.name);
    let conflict = if others.is_empty() {
        "do nothing".to_string()
    } else {
        let set = others.iter().map(|c| format!("{0} = excluded.{0}", quote_ident(c))).collect::<Vec<_>>().join(", ");
        let mine = others.iter().map(|c| format!("cur.{}", quote_ident(c))).collect::<Vec<_>>().join(", ");
        let theirs = others.iter().map(|c| format!("excluded.{}", quote_ident(c))).collect::<Vec<_>>().join(", ");
        format!("do update set {set} where row({mine}) is distinct from row({theirs})")
    };
    format!(
        "insert into {table} as cur ({cols}){overriding} select {cols} from jsonb_populate_recordset(null::{table}, $1) \
         on conflict ({pk}) {conflict}"
    )
}

async fn count(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    // Dynamic: the table is an identifier from the catalog (quoted), which cannot be bound.
    let sql = format!("select count(*) from {}", quote(table));
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await?)
}

/// Rows in `table` on the target, 0 when the table does not exist yet.
async fn count_if_exists(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    let exists =
        sqlx::query_scalar!(r#"select to_regclass($1) is not null as "exists!""#, quote(table)).fetch_one(pool).await?;
    if exists { count(pool, table).await } else { Ok(0) }
}

/// Copies every table of `source` into `target`.
///
/// # Errors
/// A non-empty target without `allow_non_empty`, a failed migration or copy, or a row-count
/// mismatch at the end.
pub async fn transfer(source: &PgPool, target: &PgPool, opts: TransferOptions) -> anyhow::Result<TransferReport> {
    let order = tables_in_fk_order(source).await?;
    let mut non_empty = Vec::new();
    for table in &order {
        let n = count_if_exists(target, table).await?;
        if n > 0 {
            non_empty.push(format!("{table} ({n} rows)"));
        }
    }
    let target_was_empty = non_empty.is_empty();
    if !target_was_empty && !opts.allow_non_empty {
        return Err(crate::outcome::Refused(format!(
            "the target database is not empty: {}; pass --allow-non-empty to merge into it (rows with the same \
             primary key are overwritten)",
            non_empty.join(", ")
        ))
        .into());
    }
    if opts.dry_run {
        let mut tables = Vec::new();
        for table in &order {
            tables.push(TableReport {
                table: table.clone(),
                source_rows: count(source, table).await?,
                changed_rows: 0,
                target_rows: count_if_exists(target, table).await?,
            });
        }
        return Ok(TransferReport { dry_run: true, target_was_empty, tables });
    }

    crate::store::migrate(target).await.context("migrating the target database")?;
    let bars = indicatif::MultiProgress::new();
    if !opts.progress {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} rows")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut reports = Vec::new();
    for table in &order {
        let info = table_info(source, table).await?;
        let source_rows = count(source, table).await?;
        let bar = bars.add(indicatif::ProgressBar::new(u64::try_from(source_rows).unwrap_or(0)));
        bar.set_style(style.clone());
        bar.set_prefix(table.clone());
        let changed = copy_table(source, target, &info, &bar).await.with_context(|| format!("copying {table}"))?;
        bar.finish();
        reports.push(TableReport { table: table.clone(), source_rows, changed_rows: changed, target_rows: 0 });
    }

    // Verify: exact counts into an empty target, at least the source's rows when merging.
    let mut mismatches = Vec::new();
    for r in &mut reports {
        r.target_rows = count(target, &r.table).await?;
        let ok = if target_was_empty { r.target_rows == r.source_rows } else { r.target_rows >= r.source_rows };
        if !ok {
            mismatches.push(format!("{}: source {} rows, target {}", r.table, r.source_rows, r.target_rows));
        }
    }
    if !mismatches.is_empty() {
        bail!("row counts differ after the copy: {}", mismatches.join("; "));
    }
    Ok(TransferReport { dry_run: false, target_was_empty, tables: reports })
}

async fn copy_table(
    source: &PgPool,
    target: &PgPool,
    info: &TableInfo,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let order = info.primary_key.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
    let select = format!("select to_jsonb(t) from {} t order by {order}", quote(&info.name));
    let upsert = upsert_sql(info);
    let mut changed = 0u64;
    // A server-side cursor streams the source in batches without holding the table in memory.
    let mut read = source.begin().await?;
    // Dynamic: the table and its key columns are identifiers from the catalog (quoted).
    sqlx::query(sqlx::AssertSqlSafe(format!("declare tessera_copy no scroll cursor for {select}")))
        .execute(&mut *read)
        .await?;
    let mut tx = target.begin().await?;
    loop {
        // `fetch` takes its count as a literal, not a parameter (a constant here).
        let mut batch: Vec<serde_json::Value> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("fetch {BATCH} from tessera_copy")))
                .fetch_all(&mut *read)
                .await?;
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        changed += flush(&mut tx, &upsert, &mut batch).await?;
        bar.inc(n);
    }
    read.rollback().await?;
    for column in &info.identity {
        // Later inserts on the target must not collide with the copied ids. Dynamic: table and
        // column are identifiers from the catalog (quoted).
        let sql = format!(
            "select setval(pg_get_serial_sequence($1, $2), greatest(coalesce((select max({col}) from {table}), 0), 1), \
             (select count(*) > 0 from {table}))",
            col = quote_ident(column),
            table = quote(&info.name)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(quote(&info.name)).bind(column).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

async fn flush(tx: &mut sqlx::PgConnection, upsert: &str, batch: &mut Vec<serde_json::Value>) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let rows = serde_json::Value::Array(std::mem::take(batch));
    // Dynamic: the upsert names the table's columns, read from the catalog ([`upsert_sql`]).
    let done = sqlx::query(sqlx::AssertSqlSafe(upsert.to_string())).bind(rows).execute(&mut *tx).await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parents_come_first_and_cycles_are_reported() {
        let tables = s(&["tasks", "projects", "users", "teams"]);
        let edges = vec![
            ("tasks".to_string(), "projects".to_string()),
            ("projects".to_string(), "users".to_string()),
            ("projects".to_string(), "teams".to_string()),
            ("users".to_string(), "users".to_string()),
        ];
        assert_eq!(topological(&tables, &edges).unwrap(), s(&["teams", "users", "projects", "tasks"]));
        let cycle = vec![("a".to_string(), "b".to_string()), ("b".to_string(), "a".to_string())];
        assert!(topological(&s(&["a", "b"]), &cycle).unwrap_err().to_string().contains("cycle"));
    }

    #[test]
    fn upserts_touch_only_rows_that_differ() {
        let t = TableInfo {
            name: "team_members".into(),
            columns: s(&["team_id", "user_id", "role"]),
            primary_key: s(&["team_id", "user_id"]),
            identity: vec![],
        };
        let sql = upsert_sql(&t);
        assert!(sql.contains("on conflict (\"team_id\", \"user_id\") do update set \"role\" = excluded.\"role\""));
        assert!(sql.contains("is distinct from"));
        let log =
            TableInfo { name: "log".into(), columns: s(&["id", "at"]), primary_key: s(&["id"]), identity: s(&["id"]) };
        assert!(upsert_sql(&log).contains("overriding system value"));
    }
}
