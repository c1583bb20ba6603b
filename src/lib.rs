//! tessera: a federated HTTP gateway.
//!
//! Reading order for newcomers: [`config`] (settings) → [`services`] (embedded Postgres, tiers) →
//! [`store`] (pool, migrations, queries) → [`sealing`] and [`federation::ca`] (keys and the CA) →
//! [`tls`] (listener and accept loop) → [`http`] (router, error envelope, OpenAPI) → [`app`]
//! (wiring it all into `tessera serve`) → [`cli`] (every command).

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod connect_failure;
pub mod error;
pub mod federation;
pub mod http;
pub mod outbox;
pub mod outcome;
pub mod queue;
pub mod ratelimit;
pub mod rbac;
pub mod sealing;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod tls;
