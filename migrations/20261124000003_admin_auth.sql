-- Admin credentials (DESIGN §6): API tokens for tooling and browser-style sessions.
--
-- Both hold only SHA-256 hashes of high-entropy random secrets (32 bytes). A hash of such a
-- secret cannot be reversed or brute-forced, and hashing (unlike argon2) keeps the per-request
-- lookup cheap. The plaintext is shown once, when created, and never stored.

create table admin_tokens (
    id           uuid primary key,
    user_id      uuid not null references users (id) on delete cascade,
    label        text not null,
    scope        text not null default 'admin',
    token_hash   bytea not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz,
    -- Written at most about once a minute per token, not on every request.
    last_used_at timestamptz,
    revoked_at   timestamptz,
    constraint admin_tokens_hash_key unique (token_hash)
);
create index admin_tokens_by_user on admin_tokens (user_id, created_at desc, id desc);

create table sessions (
    id           uuid primary key,
    user_id      uuid not null references users (id) on delete cascade,
    token_hash   bytea not null,
    created_at   timestamptz not null default now(),
    expires_at   timestamptz not null,
    revoked_at   timestamptz,
    user_agent   text,
    client_addr  text,
    constraint sessions_hash_key unique (token_hash)
);
create index sessions_by_user on sessions (user_id, created_at desc);
create index sessions_expiry on sessions (expires_at);
