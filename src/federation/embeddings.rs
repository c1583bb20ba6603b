//! The optional embedding provider of the search verb: any service with the common
//! `POST /v1/embeddings` interface (`{"model", "input": [...]}` → `{"data": [{"index",
//! "embedding"}]}`), at `TESSERA_EMBEDDINGS_URL`, with `TESSERA_EMBEDDINGS_API_KEY` as bearer
//! token and `TESSERA_EMBEDDING_MODEL` as the model.
//!
//! It does two things: it embeds a search's query text when the caller asked for vector or
//! hybrid mode without a vector, and it fills the embeddings of insights stored without one,
//! through the job queue ([`EMBED_INSIGHTS`], a periodic job on the maintenance queue that does
//! nothing when no provider is configured). The provider is the operator's own service, so its
//! URL may be internal; nothing a peer sends chooses where it goes.

use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::verbs::search::DIMENSION;
use crate::config::SearchSettings;

/// The periodic job kind that fills missing insight embeddings.
pub const EMBED_INSIGHTS: &str = "search.embed_insights";
/// Its period.
pub const EMBED_PERIOD: Duration = Duration::from_secs(10);
/// Insights embedded per provider call, and calls per job run.
const BATCH: i64 = 32;
const BATCHES_PER_RUN: usize = 16;
/// One provider call.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("no embedding provider is configured")]
    NotConfigured,
    #[error("embedding provider: {0}")]
    Transport(String),
    #[error("embedding provider answered HTTP {0}")]
    Status(u16),
    #[error("embedding provider answered something else than {DIMENSION}-dimension embeddings: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<Embedding>,
}

#[derive(Deserialize)]
struct Embedding {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tessera-embeddings/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

/// `<base>/v1/embeddings`, unless the URL already ends with it.
fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/embeddings") { base.to_string() } else { format!("{base}/v1/embeddings") }
}

/// Embeds `inputs`, one vector each, in order.
///
/// # Errors
/// [`EmbedError`].
pub async fn embed(settings: &SearchSettings, inputs: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
    let (Some(url), Some(model)) = (&settings.embeddings_url, &settings.embedding_model) else {
        return Err(EmbedError::NotConfigured);
    };
    let mut req = client().post(endpoint(url)).json(&serde_json::json!({"model": model, "input": inputs}));
    if let Some(key) = &settings.embeddings_api_key {
        req = req.bearer_auth(key.expose());
    }
    let response = req.send().await.map_err(|e| EmbedError::Transport(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(EmbedError::Status(response.status().as_u16()));
    }
    let body: EmbeddingsResponse =
        response.json().await.map_err(|e| EmbedError::Invalid(e.without_url().to_string()))?;
    if body.data.len() != inputs.len() {
        return Err(EmbedError::Invalid(format!("{} embeddings for {} inputs", body.data.len(), inputs.len())));
    }
    let mut out = vec![Vec::new(); inputs.len()];
    for (i, e) in body.data.into_iter().enumerate() {
        let at = e.index.unwrap_or(i);
        if at >= out.len() || e.embedding.len() != DIMENSION || e.embedding.iter().any(|x| !x.is_finite()) {
            return Err(EmbedError::Invalid(format!("embedding {i} has {} dimensions", e.embedding.len())));
        }
        out[at] = e.embedding;
    }
    if out.iter().any(Vec::is_empty) {
        return Err(EmbedError::Invalid("an input got no embedding".into()));
    }
    Ok(out)
}

/// Embeds one search query.
///
/// # Errors
/// [`EmbedError`].
pub async fn embed_query(settings: &SearchSettings, query: &str) -> Result<Vec<f32>, EmbedError> {
    let mut v = embed(settings, &[query.to_string()]).await?;
    Ok(v.pop().unwrap_or_default())
}

/// Fills missing insight embeddings, oldest first, a few batches at a time; returns how many.
/// A row changed meanwhile (given an embedding by someone else) is left as it is.
///
/// # Errors
/// Database or provider errors (the job retries).
pub async fn fill_missing(pool: &PgPool, settings: &SearchSettings) -> anyhow::Result<usize> {
    if settings.embeddings_url.is_none() {
        return Ok(0);
    }
    let mut filled = 0;
    for _ in 0..BATCHES_PER_RUN {
        let rows: Vec<(Uuid, String)> = sqlx::query!(
            "select id, content from insights where embedding is null order by created_at, id limit $1",
            BATCH
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| (r.id, r.content))
        .collect();
        if rows.is_empty() {
            break;
        }
        let texts: Vec<String> = rows.iter().map(|(_, c)| c.clone()).collect();
        let vectors = embed(settings, &texts).await?;
        let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
        let vectors: Vec<pgvector::Vector> = vectors.into_iter().map(pgvector::Vector::from).collect();
        // Unchecked: it binds pgvector values, whose type OID differs per database (offline data
        // described against one would not hold for another).
        sqlx::query(
            "update insights i set embedding = u.e from unnest($1::uuid[], $2::vector[]) u(id, e)
             where i.id = u.id and i.embedding is null",
        )
        .bind(&ids)
        .bind(&vectors)
        .execute(pool)
        .await?;
        filled += rows.len();
        if (rows.len() as i64) < BATCH {
            break;
        }
    }
    if filled > 0 {
        tracing::info!(filled, "filled missing insight embeddings");
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_appended_once() {
        assert_eq!(endpoint("http://e:8080"), "http://e:8080/v1/embeddings");
        assert_eq!(endpoint("http://e:8080/"), "http://e:8080/v1/embeddings");
        assert_eq!(endpoint("http://e/v1/embeddings"), "http://e/v1/embeddings");
    }
}
