//! `tessera demo seed`: a realistic data set to try and measure the gateway at once.
//!
//! Six users in three teams, a personal project each plus two projects per team, missions,
//! tasks spread over the last year, mission notes (some by several users on one shared team
//! mission, which the notes visibility rule must keep apart), insights with embeddings, and
//! preferences. Rows go in with `insert ... select from unnest(...)` in batches inside one
//! transaction: a failed seed leaves nothing behind, and a second seed is refused.

use std::fmt;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, RngExt};
use sqlx::PgPool;
use uuid::Uuid;

use super::{memory, projects, teams, users};
use crate::rbac::Role;

const BATCH: usize = 5_000;
/// The marker user: its presence means the database was already seeded.
pub const DEMO_ADMIN_EMAIL: &str = "ada@demo.tessera.test";

const USERS: [(&str, &str, Role); 6] = [
    ("Ada Lovelace", DEMO_ADMIN_EMAIL, Role::Admin),
    ("Grace Hopper", "grace@demo.tessera.test", Role::Member),
    ("Alan Turing", "alan@demo.tessera.test", Role::Member),
    ("Margaret Hamilton", "margaret@demo.tessera.test", Role::Member),
    ("Edsger Dijkstra", "edsger@demo.tessera.test", Role::Member),
    ("Barbara Liskov", "barbara@demo.tessera.test", Role::Member),
];
/// Team name and the indexes (into `USERS`) of its members.
const TEAMS: [(&str, &[usize]); 3] = [("Platform", &[0, 1, 2]), ("Research", &[0, 3, 4]), ("Design", &[1, 5])];
const STATUSES: [&str; 4] = ["todo", "in_progress", "blocked", "done"];
const PRIORITIES: [&str; 4] = ["low", "medium", "high", "urgent"];
const VERBS: [&str; 8] = ["Draft", "Review", "Fix", "Measure", "Ship", "Document", "Refactor", "Plan"];
const THINGS: [&str; 8] = [
    "the login flow",
    "cursor encoding",
    "the audit log",
    "team onboarding",
    "the CRL",
    "rate limits",
    "search ranking",
    "backups",
];

/// What a seed created, for the summary line.
#[derive(Debug, Default)]
pub struct SeedSummary {
    pub users: usize,
    pub teams: usize,
    pub projects: usize,
    pub missions: usize,
    pub tasks: usize,
    pub notes: usize,
    pub insights: usize,
    pub preferences: usize,
    pub elapsed: std::time::Duration,
}

impl fmt::Display for SeedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seeded {} users, {} teams, {} projects, {} missions, {} tasks, {} notes, {} insights, {} preferences in {:.1}s",
            self.users,
            self.teams,
            self.projects,
            self.missions,
            self.tasks,
            self.notes,
            self.insights,
            self.preferences,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Seeds the demo data set with `tasks` tasks.
///
/// # Errors
/// The database already holds the demo data set, or an insert fails (nothing is kept then).
pub async fn seed(pool: &PgPool, tasks: u32, progress: bool) -> anyhow::Result<SeedSummary> {
    let started = std::time::Instant::now();
    let mut tx = pool.begin().await?;
    // Serialise concurrent seeds; the marker check below then sees the winner's rows.
    sqlx::query!("select pg_advisory_xact_lock(7201)").execute(&mut *tx).await?;
    let seeded = sqlx::query_scalar!(
        r#"select exists (select 1 from users where lower(email) = $1) as "exists!""#,
        DEMO_ADMIN_EMAIL
    )
    .fetch_one(&mut *tx)
    .await?;
    if seeded {
        return Err(crate::outcome::Refused(format!(
            "this database already holds the demo data set (user {DEMO_ADMIN_EMAIL} exists); seed a fresh data dir or database instead"
        ))
        .into());
    }

    let mut rng = rand::rng();
    let now = Utc::now();
    let mut s = SeedSummary::default();

    let user_ids: Vec<Uuid> = USERS.iter().map(|_| Uuid::new_v4()).collect();
    for ((name, email, role), id) in USERS.iter().zip(&user_ids) {
        let user = users::Insert {
            id: *id,
            email: (*email).to_string(),
            name: (*name).to_string(),
            role: *role,
            password_hash: None,
            created_at: Some(now - Duration::days(400)),
        };
        users::insert(&mut tx, user).await?;
    }
    s.users = user_ids.len();

    let mut team_ids = Vec::new();
    for (name, members) in TEAMS {
        let team_id = Uuid::new_v4();
        teams::insert(&mut tx, team_id, name, Some(now - Duration::days(390))).await?;
        for &m in members {
            teams::add_member(&mut tx, team_id, user_ids[m], None).await?;
        }
        team_ids.push(team_id);
    }
    s.teams = team_ids.len();

    // (project id, owner user for personal projects, team index for team projects)
    let mut projects: Vec<(Uuid, Option<usize>, Option<usize>)> = Vec::new();
    for (i, (name, _, _)) in USERS.iter().enumerate() {
        let id = Uuid::new_v4();
        let name = format!("{}'s notebook", first_name(name));
        projects::insert(&mut tx, id, &name, (Some(user_ids[i]), None), Some(now - Duration::days(385))).await?;
        projects.push((id, Some(i), None));
    }
    for (t, (team, _)) in TEAMS.iter().enumerate() {
        for suffix in ["roadmap", "operations"] {
            let id = Uuid::new_v4();
            let name = format!("{team} {suffix}");
            projects::insert(&mut tx, id, &name, (None, Some(team_ids[t])), Some(now - Duration::days(385))).await?;
            projects.push((id, None, Some(t)));
        }
    }
    s.projects = projects.len();

    // Two missions per project; the owner (or a team member) leads each.
    let mut missions: Vec<(Uuid, Uuid, Vec<usize>)> = Vec::new(); // (mission, project, users who work on it)
    for (project_id, owner, team) in &projects {
        let workers: Vec<usize> = match (owner, team) {
            (Some(u), _) => vec![*u],
            (None, Some(t)) => TEAMS[*t].1.to_vec(),
            _ => vec![],
        };
        for n in 1..=2 {
            let id = Uuid::new_v4();
            let lead = workers.first().map(|&w| user_ids[w]);
            let at = Some(now - Duration::days(380));
            projects::insert_mission(&mut tx, id, &format!("Mission {n}"), (*project_id, lead), at).await?;
            missions.push((id, *project_id, workers.clone()));
        }
    }
    s.missions = missions.len();

    let bar = progress_bar(progress, u64::from(tasks), "tasks");
    let mut task_ids: Vec<(Uuid, usize)> = Vec::with_capacity(tasks as usize); // (task, mission index)
    let mut remaining = tasks as usize;
    while remaining > 0 {
        let n = remaining.min(BATCH);
        let mut ids = Vec::with_capacity(n);
        let mut titles = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut project_col = Vec::with_capacity(n);
        let mut mission_col: Vec<Option<Uuid>> = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        for _ in 0..n {
            let id = Uuid::new_v4();
            let m = rng.random_range(0..missions.len());
            let (mission_id, project_id, _) = &missions[m];
            ids.push(id);
            titles.push(format!(
                "{} {}",
                VERBS[rng.random_range(0..VERBS.len())],
                THINGS[rng.random_range(0..THINGS.len())]
            ));
            statuses.push(STATUSES[rng.random_range(0..STATUSES.len())].to_string());
            priorities.push(PRIORITIES[rng.random_range(0..PRIORITIES.len())].to_string());
            project_col.push(*project_id);
            // About a third of tasks hang directly off the project, the rest off a mission.
            mission_col.push(if rng.random_range(0..3) == 0 { None } else { Some(*mission_id) });
            created.push(random_time(&mut rng, now));
            task_ids.push((id, m));
        }
        sqlx::query!(
            "insert into tasks (id, title, status, priority, project_id, mission_id, created_at, updated_at, tags, due_date)
             select id, title, status, priority, project_id, mission_id, created_at, created_at, array[priority],
                    case when status <> 'done' then created_at + interval '14 days' end
             from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::uuid[], $7::timestamptz[])
                  as t(id, title, status, priority, project_id, mission_id, created_at)",
            &ids,
            &titles,
            &statuses,
            &priorities,
            &project_col,
            &mission_col as &[Option<Uuid>],
            &created,
        )
        .execute(&mut *tx)
        .await
        .context("inserting tasks")?;
        remaining -= n;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    s.tasks = tasks as usize;

    // Notes: one for every tenth task, written by someone working on its mission. Team missions
    // get notes from several members, so "never another user's note" is testable on this data.
    let mut ids = Vec::new();
    let mut mission_col = Vec::new();
    let mut user_col = Vec::new();
    let mut task_col = Vec::new();
    let mut notes = Vec::new();
    let mut created = Vec::new();
    for (task_id, m) in task_ids.iter().step_by(10) {
        let (mission_id, _, workers) = &missions[*m];
        let Some(&w) = workers.get(rng.random_range(0..workers.len().max(1))) else { continue };
        ids.push(Uuid::new_v4());
        mission_col.push(*mission_id);
        user_col.push(user_ids[w]);
        task_col.push(*task_id);
        notes.push(format!("{} noted: {}", first_name(USERS[w].0), THINGS[rng.random_range(0..THINGS.len())]));
        created.push(random_time(&mut rng, now));
    }
    for chunk in (0..ids.len()).collect::<Vec<_>>().chunks(BATCH) {
        let r = chunk[0]..chunk[chunk.len() - 1] + 1;
        sqlx::query!(
            "insert into mission_tasks (id, mission_id, user_id, task_id, notes, created_at, updated_at)
             select *, c from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::timestamptz[])
                  as n(id, mission_id, user_id, task_id, notes, c)",
            &ids[r.clone()],
            &mission_col[r.clone()],
            &user_col[r.clone()],
            &task_col[r.clone()],
            &notes[r.clone()],
            &created[r],
        )
        .execute(&mut *tx)
        .await
        .context("inserting notes")?;
    }
    s.notes = ids.len();

    // Memory: insights with 384-dimension embeddings, and preferences.
    let insight_count = (tasks as usize / 50).clamp(USERS.len() * 2, 20_000);
    for chunk_start in (0..insight_count).step_by(1_000) {
        let n = (insight_count - chunk_start).min(1_000);
        for i in 0..n {
            let u = (chunk_start + i) % USERS.len();
            let embedding: Vec<f32> = (0..384).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let insight = memory::InsightInsert {
                id: Uuid::new_v4(),
                user_id: user_ids[u],
                content: format!(
                    "{} learned something about {}",
                    first_name(USERS[u].0),
                    THINGS[rng.random_range(0..THINGS.len())]
                ),
                category: Some(["engineering", "process", "people"][rng.random_range(0..3)].to_string()),
                embedding: Some(pgvector::Vector::from(embedding)),
                source: "agent".into(),
                relevance_score: 1.0,
                metadata: None,
                created_at: Some(random_time(&mut rng, now)),
            };
            memory::insert_insight(&mut tx, insight).await.context("inserting insights")?;
        }
    }
    s.insights = insight_count;

    for (u, id) in user_ids.iter().enumerate() {
        for (key, value) in [
            ("theme", serde_json::json!("dark")),
            ("timezone", serde_json::json!("UTC")),
            ("digest", serde_json::json!({"daily": u % 2 == 0})),
        ] {
            let preference = memory::PreferenceInsert {
                id: Uuid::new_v4(),
                user_id: *id,
                key: key.into(),
                value,
                category: Some("ui".into()),
                source: Some("user".into()),
                mutable: None,
                created_at: Some(random_time(&mut rng, now)),
            };
            memory::insert_preference(&mut tx, preference).await?;
            s.preferences += 1;
        }
    }

    tx.commit().await?;
    s.elapsed = started.elapsed();
    Ok(s)
}

fn first_name(full: &str) -> &str {
    full.split(' ').next().unwrap_or(full)
}

fn random_time(rng: &mut impl Rng, now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::seconds(rng.random_range(0..365 * 24 * 3600))
}

fn progress_bar(show: bool, len: u64, what: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} ({per_sec})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}
