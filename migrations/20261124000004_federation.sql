-- Federation trust (DESIGN §3): peers, grants, enrollment tokens, issued client certificates
-- and the audit log.

-- One row per remote organisation, in either role:
--   * a peer that calls us: we issued it a client certificate; the guard accepts its current
--     serial, or the previous one until previous_serial_grace_until (renewal overlap);
--   * a peer we call: its endpoint, the CA we pinned at enrollment, and the client certificate
--     and sealed private key it issued to us.
create table federation_peers (
    id                          uuid primary key,
    name                        text not null,
    state                       text not null default 'pending'
                                check (state in ('pending', 'active', 'degraded', 'suspended', 'revoked')),
    -- Role "calls us".
    current_serial              text,
    previous_serial             text,
    previous_serial_grace_until timestamptz,
    cert_not_after              timestamptz,
    -- Role "we call it".
    endpoint_url                text,
    remote_grant_id             uuid,
    pinned_ca_pem               text,
    ca_fingerprint              text,
    client_cert_pem             text,
    sealed_client_key           text check (sealed_client_key not like '%-----BEGIN%'),
    client_cert_not_after       timestamptz,
    created_at                  timestamptz not null default now(),
    updated_at                  timestamptz not null default now()
);
create unique index federation_peers_name_key on federation_peers (lower(name));

create table federation_grants (
    id              uuid primary key,
    peer_id         uuid not null references federation_peers (id) on delete cascade,
    -- Null once the subject user is deleted; the grant is revoked first (trigger below).
    subject_user_id uuid references users (id) on delete set null,
    scope           jsonb not null,
    -- Bumped on every scope edit so caches can tell stale entries apart.
    scope_version   integer not null default 1,
    status          text not null default 'pending'
                    check (status in ('pending', 'active', 'revoked', 'expired')),
    expires_at      timestamptz,
    created_at      timestamptz not null default now(),
    activated_at    timestamptz,
    revoked_at      timestamptz,
    revoke_reason   text,
    constraint federation_grants_revoked_has_time check ((status = 'revoked') = (revoked_at is not null))
);
create index federation_grants_by_peer on federation_grants (peer_id, created_at desc);
create index federation_grants_by_subject on federation_grants (subject_user_id) where status in ('pending', 'active');

create table federation_enrollment_tokens (
    id         uuid primary key,
    token_hash bytea not null,
    grant_id   uuid not null references federation_grants (id) on delete cascade,
    peer_id    uuid not null references federation_peers (id) on delete cascade,
    expires_at timestamptz not null,
    used_at    timestamptz,
    created_at timestamptz not null default now(),
    constraint federation_enrollment_tokens_hash_key unique (token_hash)
);

-- Every client certificate the CA issued, so revocation can publish the serials in the CRL.
create table federation_issued_certs (
    serial     text primary key,
    peer_id    uuid not null references federation_peers (id) on delete cascade,
    grant_id   uuid not null references federation_grants (id) on delete cascade,
    not_before timestamptz not null,
    not_after  timestamptz not null,
    issued_at  timestamptz not null default now(),
    revoked_at timestamptz
);
create index federation_issued_certs_revoked on federation_issued_certs (revoked_at) where revoked_at is not null;

-- One row per federation request, allowed or denied, and per trust event (enrollment,
-- renewal, revocation). Written off the request path in batches by later work.
create table federation_audit_log (
    id              bigint generated always as identity primary key,
    at              timestamptz not null default now(),
    grant_id        uuid,
    peer_id         uuid,
    subject_user_id uuid,
    verb            text not null,
    resource        text,
    query_hash      text,
    outcome         text not null,
    deny_code       text,
    reason          text,
    rows            integer,
    bytes_out       bigint,
    latency_ms      double precision
);
create index federation_audit_log_by_grant on federation_audit_log (grant_id, at desc);
create index federation_audit_log_at on federation_audit_log (at);

-- Disabling or deleting a user revokes every grant that names them as subject, whatever code
-- path made the change, and the certificates issued under those grants.
create function federation_revoke_subject_grants() returns trigger language plpgsql as $$
declare
    reason text := case when tg_op = 'DELETE' then 'subject user deleted' else 'subject user disabled' end;
begin
    with revoked as (
        update federation_grants
           set status = 'revoked', revoked_at = now(), revoke_reason = reason
         where subject_user_id = old.id and status in ('pending', 'active')
        returning id, peer_id, subject_user_id
    ), certs as (
        update federation_issued_certs c set revoked_at = now()
          from revoked r where c.grant_id = r.id and c.revoked_at is null
    )
    insert into federation_audit_log (grant_id, peer_id, subject_user_id, verb, outcome, reason)
    select id, peer_id, subject_user_id, 'revoke', 'revoked', reason from revoked;
    if tg_op = 'DELETE' then return old; end if;
    return new;
end $$;

create trigger users_disable_revokes_grants
    after update of disabled_at on users
    for each row when (old.disabled_at is null and new.disabled_at is not null)
    execute function federation_revoke_subject_grants();

create trigger users_delete_revokes_grants
    before delete on users
    for each row execute function federation_revoke_subject_grants();
