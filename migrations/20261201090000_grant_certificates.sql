-- Certificate state per grant (day-2 operations).
--
-- A peer often reads for several subjects, so it holds several grants, each with its own client
-- certificate. Until now the current serial, the previous one and its grace lived on the peer
-- row, so enrolling a second grant replaced the first grant's serial and every request with the
-- first certificate was refused. From here on each grant carries its own certificate state and
-- the guard checks the grant's columns; the peer's columns only say which certificate was issued
-- to the peer last (for display).
alter table federation_grants
    add column current_serial              text,
    add column previous_serial             text,
    add column previous_serial_grace_until timestamptz,
    add column cert_not_after              timestamptz,
    add column renewed_at                  timestamptz;

-- The peer's serials belong to the grant they were issued under.
update federation_grants g
   set current_serial = p.current_serial,
       cert_not_after = p.cert_not_after,
       previous_serial = p.previous_serial,
       previous_serial_grace_until = p.previous_serial_grace_until
  from federation_peers p
 where p.id = g.peer_id
   and exists (select 1 from federation_issued_certs c where c.serial = p.current_serial and c.grant_id = g.id);

-- A re-enrollment token replaces the certificate of an active grant (a reader that was away past
-- its certificate's expiry comes back on the same grant); an ordinary token activates a pending one.
alter table federation_enrollment_tokens add column reenroll boolean not null default false;
