-- The gateway's own certificate authority (DESIGN §3, §7). It signs the TLS server certificate
-- and, once federation trust lands, peers' client certificates. Exactly one row; replicas that
-- boot together race on `insert ... on conflict do nothing` and all read the winner.
-- The private key is sealed (AES-256-GCM, see src/sealing.rs): this table never holds PEM keys.
create table gateway_ca (
    id         smallint primary key default 1 check (id = 1),
    cert_pem   text not null,
    sealed_key text not null check (sealed_key not like '%-----BEGIN%'),
    not_after  timestamptz not null,
    created_at timestamptz not null default now()
);
