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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The README's "Where things are" map names every top-level module, every store aggregate
    /// and every peer-facing verb file, so it cannot fall behind the layout.
    #[test]
    fn the_readme_map_names_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let map = readme.split("### Where things are").nth(1).unwrap().split("\n## ").next().unwrap();
        let names = |dir: &str| -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lib.rs" && n != "mod.rs")
                .collect();
            names.sort();
            names
        };
        for name in names("src") {
            let path = if name.ends_with(".rs") { format!("`src/{name}`") } else { format!("`src/{name}/`") };
            assert!(map.contains(&path), "the README map does not name {path}");
        }
        for dir in ["src/store", "src/federation/verbs"] {
            for name in names(dir) {
                let stem = name.trim_end_matches(".rs");
                assert!(
                    map.contains(&format!("`{name}`")) || map.contains(&format!("`{stem}`")),
                    "the README map does not name {dir}/{name}"
                );
            }
        }
    }
}
