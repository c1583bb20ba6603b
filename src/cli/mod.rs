//! The `tessera` command line (clap). `main.rs` only calls [`main`].
//!
//! Exit codes follow one table, [`exit`]: 0 ok, 1 unreachable, 2 authentication or trust, 3 refused
//! by the server, 64 usage (for `doctor`: 1 a red check). Logs go to stderr so that commands
//! printing data (`openapi`, `doctor --json`) keep stdout clean; commands other than `serve` log
//! only warnings and errors unless `-v` is given (`TESSERA_LOG` overrides both).

mod admin;
mod audit;
mod bench_audit;
mod bench_handshake;
mod bench_list;
mod bench_queue;
mod bench_search;
mod client;
mod doctor;
pub mod exit;
mod federation;
mod queue;
mod storage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use exit::Exit;

use crate::config::{Config, GatewayArgs, ServerArgs};
use crate::services::Database;

/// tessera: a federated HTTP gateway. Peers read a scoped slice of this gateway's data over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Log informational messages too (commands other than `serve` log only warnings and errors);
    /// TESSERA_LOG overrides.
    #[arg(short, long, global = true, help_heading = "Gateway options (every command)")]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: start services, apply migrations, serve HTTPS until SIGINT/SIGTERM.
    Serve(Box<ServerArgs>),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check tier, services, pgvector, data dir and CA; exit 1 when any check is red.
    Doctor {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Demonstration data.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Print the OpenAPI document (the same JSON as openapi/tessera.json).
    Openapi,
    /// Manage the embedded Postgres cluster of the data dir (tier local).
    #[command(subcommand)]
    Db(DbCommand),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Federation peers: register, list, show, and enroll with a remote gateway (`add`).
    #[command(subcommand)]
    Peer(federation::PeerCommand),
    /// Federation grants: create, list, show, revoke, and mint enrollment tokens.
    #[command(subcommand)]
    Grant(federation::GrantCommand),
    /// Read from peers: list, get, capabilities, and the merged local/peer query.
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Admin set-up on the database: `admin bootstrap` creates the first admin headless.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Sign in to a gateway and save the session for later commands.
    Login(admin::LoginArgs),
    /// Admin tokens: list, create, revoke, rotate, recover.
    Token(admin::TokenArgs),
    /// The federation audit log over the admin API: list, tail [--follow], export (jsonl or csv).
    Audit(audit::AuditArgs),
    /// Bulk-load data API records from a JSON Lines file, all or nothing.
    Import(admin::ImportArgs),
    /// The job queue: list, stats, pause, resume, jobs tail, drain, retry (on the database).
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Storage: move the gateway's data to another tier (`migrate-tier`).
    #[command(subcommand)]
    Storage(storage::StorageCommand),
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Load a realistic data set: users, teams, personal and team projects, missions, tasks, notes, memory.
    Seed {
        /// How many tasks to create.
        #[arg(long, default_value_t = 10_000)]
        tasks: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The list verb over mTLS against the SQL ceiling (seeds 1M tasks on first run).
    List(bench_list::ListBench),
    /// The search verb over mTLS: text against its SQL ceiling, vector recall over HNSW, hybrid
    /// (seeds 1M tasks and 100 000 insights with embeddings on first run).
    Search(bench_search::SearchBench),
    /// The job queue: burn-down of 200 000 no-op jobs and enqueue-to-start latency (durable commits).
    Queue(bench_queue::QueueBench),
    /// TLS handshakes per second: full and resumed, with and without a client certificate.
    Handshake(bench_handshake::HandshakeBench),
    /// Audit log retention under write load (seeds 10M rows over 120 days on first run).
    Audit(bench_audit::AuditBench),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Stop the embedded Postgres running on the data dir, if any.
    Stop,
    /// Start (or adopt) the embedded Postgres on the data dir, re-create `<database>` with every
    /// migration applied, and print its URL: the schema sqlx's compile-time checks run against
    /// (`scripts/sqlx.sh`). The cluster is left running; `tessera db stop` stops it.
    Schema {
        /// The database to (re)create.
        #[arg(default_value = "tessera_schema")]
        database: String,
    },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    crate::tls::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 on a usage error, which our table reserves for authentication.
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => Exit::Ok,
                _ => Exit::Usage,
            }
            .into();
        }
    };
    if let Command::Openapi = cli.command {
        print!("{}", crate::http::openapi_document_json());
        return ExitCode::SUCCESS;
    }
    // The server's settings are flags of `serve` only; other commands read them from the
    // environment (and the TOML file), as the server would.
    let mut gateway = cli.gateway;
    gateway.server = match &cli.command {
        Command::Serve(server) => (**server).clone(),
        _ => match ServerArgs::from_env() {
            Ok(server) => server,
            Err(e) => {
                eprintln!("error: invalid configuration: {}", env_error(&e));
                return Exit::Usage.into();
            }
        },
    };
    let config = match gateway.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage.into();
        }
    };
    // Flushes the last spans when dropped at the end of `main`, after the runtime (declared
    // later, dropped first; the exporter has its own thread).
    let telemetry = crate::telemetry::init(config.log_format, default_log_filter(&cli.command, cli.verbose));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every command but `serve` is one trace, whose id its log lines carry; `serve` has one per
    // request (and per background task) instead of one for its whole life.
    let span = match &cli.command {
        Command::Serve(_) => tracing::Span::none(),
        _ if !telemetry.enabled() => tracing::Span::none(),
        command => tracing::info_span!("command", otel.name = command_name(command), trace_id = tracing::field::Empty),
    };
    crate::telemetry::record_trace_id(&span);
    let result = runtime.block_on(tracing::Instrument::instrument(run(cli.command, config), span));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            Exit::for_error(&e).into()
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(_) => crate::app::serve(config).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate => {
            let db = Database::open(&config, 2).await?;
            let result = crate::store::migrate(&db.pool).await;
            db.close().await;
            result?;
            eprintln!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { json } => doctor::run(&config, json).await,
        Command::Demo(DemoCommand::Seed { tasks }) => {
            let db = Database::open(&config, 4).await?;
            let result = async {
                crate::store::migrate(&db.pool).await?;
                crate::store::demo::seed(&db.pool, tasks, true).await
            }
            .await;
            db.close().await;
            let summary = result?;
            eprintln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(DbCommand::Stop) => {
            let stopped = crate::services::postgres::stop_data_dir(&config.data_dir)?;
            eprintln!("{}", if stopped { "embedded Postgres stopped" } else { "embedded Postgres was not running" });
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(DbCommand::Schema { database }) => {
            let pg = crate::services::postgres::EmbeddedPostgres::start(&config.data_dir, None).await?;
            crate::store::recreate_migrated(&pg, &database).await?;
            println!("{}", pg.url(&database));
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin(c) => Ok(admin::bootstrap(c, &config).await),
        Command::Login(a) => Ok(admin::login(a, &config).await),
        Command::Token(a) => Ok(admin::token(a, &config).await),
        Command::Audit(a) => Ok(audit::run(a, &config).await),
        Command::Import(a) => Ok(admin::import(a, &config).await),
        Command::Bench(BenchCommand::List(args)) => bench_list::run(&config, &args).await.map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Search(args)) => {
            bench_search::run(&config, &args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Audit(args)) => bench_audit::run(&config, &args).await.map(|()| ExitCode::SUCCESS),
        Command::Bench(BenchCommand::Handshake(args)) => {
            bench_handshake::run(&config, &args).await.map(|()| ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Queue(args)) => bench_queue::run(&config, &args).await.map(|()| ExitCode::SUCCESS),
        Command::Queue(cmd) => queue::run(&config, cmd).await,
        Command::Peer(cmd) => federation::peer(&config, cmd).await,
        Command::Grant(cmd) => federation::grant(&config, cmd).await,
        Command::Federation(cmd) => federation::federation(&config, cmd).await,
        Command::Storage(cmd) => storage::run(&config, cmd).await,
        Command::Openapi => {
            print!("{}", crate::http::openapi_document_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The command's name for its trace (`tessera federation`, ...): the subcommand only, never its
/// arguments.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "tessera serve",
        Command::Migrate => "tessera migrate",
        Command::Doctor { .. } => "tessera doctor",
        Command::Demo(_) => "tessera demo",
        Command::Openapi => "tessera openapi",
        Command::Db(_) => "tessera db",
        Command::Bench(_) => "tessera bench",
        Command::Peer(_) => "tessera peer",
        Command::Grant(_) => "tessera grant",
        Command::Federation(_) => "tessera federation",
        Command::Admin(_) => "tessera admin",
        Command::Login(_) => "tessera login",
        Command::Token(_) => "tessera token",
        Command::Audit(_) => "tessera audit",
        Command::Import(_) => "tessera import",
        Command::Queue(_) => "tessera queue",
        Command::Storage(_) => "tessera storage",
    }
}

/// The error's context chain, with a failed HTTPS call told by its cause (trust, refused,
/// timeout, DNS...) instead of reqwest's "error sending request for url (...)".
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if cause.downcast_ref::<reqwest::Error>().is_some() {
            let failure = crate::connect_failure::ConnectFailure::classify(cause);
            parts.push(failure.cause());
            if matches!(failure, crate::connect_failure::ConnectFailure::UntrustedServer(_)) {
                parts
                    .push("check --ca-file, or that the enrollment URL's #sha256 pin is the CA of that gateway".into());
            }
            return parts.join(": ");
        }
        parts.push(cause.to_string());
    }
    format!("{e:#}")
}

/// A clap error about a server setting read from the environment, told by its variable name
/// (clap names the flag, which this command does not have).
fn env_error(e: &clap::Error) -> String {
    use clap::Args as _;
    use clap::error::{ContextKind, ContextValue};
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split_whitespace().next().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    let value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let command = ServerArgs::augment_args(clap::Command::new("tessera"));
    let var = command
        .get_arguments()
        .find(|a| a.get_long().is_some_and(|l| flag == format!("--{l}")))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    match var {
        Some(var) => format!("{var}: '{value}' is not a valid value"),
        None => e.to_string().trim().to_string(),
    }
}

/// The server logs what it does; other commands print their result and log only warnings and
/// errors, unless `-v` asks for more. `TESSERA_LOG` overrides either.
fn default_log_filter(command: &Command, verbose: bool) -> &'static str {
    match (command, verbose) {
        (Command::Serve(_), _) | (_, true) => "info,sqlx=warn",
        _ => "warn",
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn commands_other_than_serve_log_warnings_unless_verbose() {
        use clap::Parser as _;
        let filter = |args: &[&str]| {
            let cli = super::Cli::try_parse_from(args).unwrap();
            super::default_log_filter(&cli.command, cli.verbose)
        };
        assert_eq!(filter(&["tessera", "grant", "list"]), "warn");
        assert_eq!(filter(&["tessera", "-v", "grant", "list"]), "info,sqlx=warn");
        assert_eq!(filter(&["tessera", "grant", "list", "--verbose"]), "info,sqlx=warn");
        assert_eq!(filter(&["tessera", "serve"]), "info,sqlx=warn");
    }

    #[test]
    fn server_options_belong_to_serve_only() {
        use clap::Parser as _;
        let serve = super::Cli::try_parse_from(["tessera", "serve", "--tls-sans", "gw.example"]).unwrap();
        match serve.command {
            super::Command::Serve(s) => assert_eq!(s.tls_sans, Some(vec!["gw.example".to_string()])),
            other => panic!("{other:?}"),
        }
        let e = super::Cli::try_parse_from(["tessera", "grant", "list", "--tls-sans", "x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let e = super::Cli::try_parse_from(["tessera", "--handshake-timeout-secs", "5", "queue", "list"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        // The shared settings stay global: before or after the subcommand.
        assert!(super::Cli::try_parse_from(["tessera", "queue", "list", "--data-dir", "/tmp/x"]).is_ok());
        assert!(super::Cli::try_parse_from(["tessera", "--data-dir", "/tmp/x", "serve"]).is_ok());
    }
}
