-- `outbox.emit` read the matching webhook endpoints from its statement's snapshot and then
-- inserted their deliveries. An endpoint deleted (and committed) in between was still in the
-- snapshot, so the deliveries' foreign key failed and the caller's whole transaction with it:
-- revoking a token while a webhook was being deleted answered 500 (found by the schemathesis
-- contract test). Locking the endpoints it delivers to (`for key share`, which only conflicts with
-- a delete or a key change) makes a concurrent delete either wait for the event, whose deliveries
-- it then removes by its cascade, or be seen as done, so the endpoint is skipped.
create or replace function outbox.emit(event_name text, payload jsonb) returns uuid language plpgsql as $$
declare
    event_id uuid := gen_random_uuid();
begin
    insert into outbox.deliveries (id, event_id, endpoint_id, event, payload)
    select gen_random_uuid(), event_id, e.id, event_name, payload
      from outbox.webhook_endpoints e
     where event_name = any(e.events) or '*' = any(e.events)
     order by e.created_at, e.id
       for key share of e;
    return event_id;
end $$;
