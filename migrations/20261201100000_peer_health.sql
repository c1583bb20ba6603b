-- The reader's view of the peers it calls (issue 14, points 1 and 4): when the client
-- certificate is renewed, how the last calls went, and whether the other side refuses us.
-- All of it lives on gateway A's `federation_peers` rows (role "we call it"); the data-holder
-- columns are untouched.
alter table federation_peers
    -- When this gateway stored the current client certificate. Renewal is scheduled from here
    -- rather than from notBefore, which the issuer back-dates to absorb clock skew: counted from
    -- notBefore, a 90 s certificate would renew after 40 s instead of 60 s.
    add column client_cert_received_at timestamptz,
    -- When to renew: about two thirds into the certificate's own life (with jitter), or the next
    -- retry after a failure (backoff, never past expiry). Null until the renewal job has read the
    -- certificate; the trigger below clears it whenever the certificate changes.
    add column renew_at                timestamptz,
    -- A renewal in progress (one job of one replica at a time), so overlapping jobs cannot
    -- renew twice with the same certificate.
    add column renewal_lease_until     timestamptz,
    -- Failed renewals in a row (reset by a success or a new certificate).
    add column renewal_failures        integer not null default 0,
    add column last_renewed_at         timestamptz,
    -- `peer.certificate_expiring` was emitted for the current certificate (once per certificate).
    add column expiring_notified_at    timestamptz,
    -- Last successful call (verb or renewal) to the peer.
    add column last_success_at         timestamptz,
    -- Last failed call or renewal: a short cause (code and message, never secrets) and its time.
    add column last_error              text,
    add column last_error_at           timestamptz,
    -- First refusal (401/403) of the current streak; cleared by the next success.
    add column refusing_since          timestamptz;

-- A new client certificate, stored by any path (enrollment, re-enrollment, renewal), starts a
-- new schedule: whatever the statement itself did not set is reset, so `peer add` (which knows
-- nothing of renewal) can never leave the previous certificate's schedule or failure streak
-- behind.
create function federation_peers_new_client_cert() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' then
        if new.client_cert_pem is not null and new.client_cert_received_at is null then
            new.client_cert_received_at := now();
        end if;
        return new;
    end if;
    if new.client_cert_pem is distinct from old.client_cert_pem then
        if new.client_cert_received_at is not distinct from old.client_cert_received_at then
            new.client_cert_received_at := now();
        end if;
        if new.renew_at is not distinct from old.renew_at then
            new.renew_at := null;
        end if;
        if new.renewal_failures is not distinct from old.renewal_failures then
            new.renewal_failures := 0;
        end if;
        if new.refusing_since is not distinct from old.refusing_since then
            new.refusing_since := null;
        end if;
        new.expiring_notified_at := null;
        new.renewal_lease_until := null;
    end if;
    return new;
end $$;

create trigger federation_peers_new_client_cert
    before insert or update of client_cert_pem on federation_peers
    for each row execute function federation_peers_new_client_cert();

-- Existing certificates: the best known receipt time is the row's last update.
update federation_peers set client_cert_received_at = updated_at where client_cert_pem is not null;
