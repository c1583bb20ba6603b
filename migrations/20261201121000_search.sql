-- Search (issue 16): full-text indexes for the text mode of the search verb, and an HNSW index
-- for its vector mode over insights' embeddings.
--
-- Expression indexes, not stored generated columns: no table rewrite, no wider rows for the
-- list verb to read, and `select t.*` stays what the list verb returns. The search statements
-- use exactly these expressions (see `src/federation/verbs/search.rs`, `TSV`), so the planner
-- matches them. The `simple` configuration (no stemming, no stop words) because the data is in
-- whatever language its organisation writes.
create index tasks_search on tasks
    using gin (to_tsvector('simple'::regconfig, title || ' ' || coalesce(description, '')));
create index mission_tasks_search on mission_tasks
    using gin (to_tsvector('simple'::regconfig, notes));
create index insights_search on insights
    using gin (to_tsvector('simple'::regconfig, content));
create index preferences_search on preferences
    using gin (to_tsvector('simple'::regconfig, key || ' ' || value::text));

-- Cosine distance (`<=>`), the measure the vector mode ranks by.
create index insights_embedding_hnsw on insights using hnsw (embedding vector_cosine_ops);

-- The insights the embedding job still has to fill (`search.embed_insights`), oldest first.
create index insights_missing_embedding on insights (created_at, id) where embedding is null;
