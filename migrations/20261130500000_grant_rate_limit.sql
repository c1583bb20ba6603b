-- Per-grant federation rate limit (DESIGN §5). Null means the gateway default
-- (TESSERA_FEDERATION_RATE_PER_MINUTE); a value overrides it for this grant only. The budget
-- itself is counted by the rate limiter (in Valkey in tier federated), never in this table.
alter table federation_grants
    add column rate_per_minute integer
    constraint federation_grants_rate_per_minute_positive check (rate_per_minute is null or rate_per_minute > 0);
