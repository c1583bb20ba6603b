-- One definition of "emit an event" for Rust and SQL alike, and grant.revoked raised by the
-- database itself.
--
-- `outbox.emit` writes one delivery per webhook endpoint whose filter matches, in the calling
-- transaction; `tessera::outbox::emit_event` calls it. Grants are revoked by the admin API and
-- CLI, but also by a trigger when their subject user is disabled or deleted
-- (`federation_revoke_subject_grants`), so the `grant.revoked` event comes from a trigger on
-- the status change: every path that revokes a grant emits it, in the same transaction.

create function outbox.emit(event_name text, payload jsonb) returns uuid language plpgsql as $$
declare
    event_id uuid := gen_random_uuid();
begin
    insert into outbox.deliveries (id, event_id, endpoint_id, event, payload)
    select gen_random_uuid(), event_id, e.id, event_name, payload
      from outbox.webhook_endpoints e
     where event_name = any(e.events) or '*' = any(e.events)
     order by e.created_at, e.id;
    return event_id;
end $$;

create function outbox.grant_revoked_event() returns trigger language plpgsql as $$
begin
    perform outbox.emit('grant.revoked', jsonb_build_object(
        'grantId', new.id, 'peerId', new.peer_id, 'reason', new.revoke_reason));
    return null;
end $$;

create trigger federation_grants_revoked_event
    after update of status on federation_grants
    for each row when (new.status = 'revoked' and old.status is distinct from 'revoked')
    execute function outbox.grant_revoked_event();
