//! Users: the rows of `users` and every query the data API makes of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::rbac::Role;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    /// Set when the user was disabled: no sign-in, every credential refused.
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A validated user to insert.
pub struct Insert {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub password_hash: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// # Errors
/// Constraint violations (a taken email or id); database errors.
pub async fn insert(conn: &mut PgConnection, new: Insert) -> Result<User, sqlx::Error> {
    sqlx::query_as!(
        User,
        r#"insert into users (id, email, name, role, password_hash, created_at)
           values ($1, $2, $3, $4, $5, coalesce($6, now()))
           returning id, email, name, role as "role: Role", disabled_at, created_at"#,
        new.id,
        new.email,
        new.name,
        new.role as Role,
        new.password_hash,
        new.created_at,
    )
    .fetch_one(conn)
    .await
}

/// Up to `n` users before `after` in the keyset order `created_at desc, id desc`.
///
/// # Errors
/// Database errors.
pub async fn page(db: impl PgExecutor<'_>, after: (DateTime<Utc>, Uuid), n: i64) -> Result<Vec<User>, sqlx::Error> {
    sqlx::query_as!(
        User,
        r#"select id, email, name, role as "role: Role", disabled_at, created_at from users
           where (created_at, id) < ($1, $2) order by created_at desc, id desc limit $3"#,
        after.0,
        after.1,
        n,
    )
    .fetch_all(db)
    .await
}

/// Serialises disables for the rest of the transaction, so two admins cannot disable each other
/// at once and strand the gateway.
///
/// # Errors
/// Database errors.
pub async fn lock_disables(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("select pg_advisory_xact_lock(7316002)").execute(conn).await.map(drop)
}

/// The role of user `id`, or `None` when there is no such user.
///
/// # Errors
/// Database errors.
pub async fn role_of(conn: &mut PgConnection, id: Uuid) -> Result<Option<Role>, sqlx::Error> {
    sqlx::query_scalar!(r#"select role as "role: Role" from users where id = $1"#, id).fetch_optional(conn).await
}

/// How many enabled admins there are besides user `id`.
///
/// # Errors
/// Database errors.
pub async fn other_enabled_admins(conn: &mut PgConnection, id: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from users where role = 'admin' and disabled_at is null and id <> $1"#,
        id
    )
    .fetch_one(conn)
    .await
}

/// Disables user `id` (idempotent) and revokes its sessions and admin tokens; returns the user
/// and the ids of the tokens revoked now (for their audit events).
///
/// # Errors
/// Database errors; `RowNotFound` when there is no such user.
pub async fn disable(conn: &mut PgConnection, id: Uuid) -> Result<(User, Vec<Uuid>), sqlx::Error> {
    let user = sqlx::query_as!(
        User,
        r#"update users set disabled_at = coalesce(disabled_at, now()) where id = $1
           returning id, email, name, role as "role: Role", disabled_at, created_at"#,
        id
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!("update sessions set revoked_at = now() where user_id = $1 and revoked_at is null", id)
        .execute(&mut *conn)
        .await?;
    let revoked = sqlx::query_scalar!(
        "update admin_tokens set revoked_at = now() where user_id = $1 and revoked_at is null returning id",
        id
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok((user, revoked))
}
