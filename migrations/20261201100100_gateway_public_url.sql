-- The public base URL the running gateway advertises (TESSERA_PUBLIC_URL, or derived from the
-- address it actually bound). `tessera grant token` runs beside the gateway on the same database
-- but not in its environment: it reads the URL here instead of guessing from its own
-- TESSERA_LISTEN. One row; every start (of any replica) overwrites it, and replicas behind one
-- load balancer share one public URL.
create table gateway_public_url (
    id smallint primary key default 1 constraint gateway_public_url_single_row check (id = 1),
    url text not null,
    recorded_at timestamptz not null default now()
);
