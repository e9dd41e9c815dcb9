-- The registry: accounts, API keys, hubs, devices, routes, networks.
-- Written once for SQLite and PostgreSQL: TEXT ids (UUIDs), BIGINT timestamps in
-- microseconds since the epoch, BOOLEAN flags, TEXT holding JSON, BIGINT versions for
-- optimistic concurrency.
-- The runner splits files at semicolons, so none may appear in a literal or a comment.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);

-- At most one admin account: two nodes bootstrapping the same empty database at once
-- cannot both create one.
CREATE UNIQUE INDEX accounts_single_admin ON accounts (is_admin) WHERE is_admin;

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE hubs (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    plan TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    disable_events BOOLEAN NOT NULL,
    events_topic_prefix TEXT NOT NULL,
    enable_device_auto_provisioning BOOLEAN NOT NULL,
    has_custom_ca BOOLEAN NOT NULL,
    allow_anonymous BOOLEAN NOT NULL,
    limits TEXT NOT NULL,
    region TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

CREATE INDEX hubs_account ON hubs (account_id, plan);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    hub_id TEXT NOT NULL REFERENCES hubs (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    allow_insecure BOOLEAN NOT NULL,
    allow_multiple_connections BOOLEAN NOT NULL,
    message_filters TEXT NOT NULL,
    has_custom_certificate BOOLEAN NOT NULL,
    last_activity_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    UNIQUE (hub_id, name)
);

CREATE INDEX devices_account ON devices (account_id);

CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    hub_id TEXT NOT NULL REFERENCES hubs (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    topic TEXT NOT NULL,
    route_type TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

CREATE INDEX routes_hub ON routes (hub_id);
CREATE INDEX routes_account ON routes (account_id);

CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    hub_id TEXT NOT NULL REFERENCES hubs (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    name TEXT NOT NULL,
    network_type TEXT NOT NULL,
    topic_prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE INDEX networks_hub ON networks (hub_id);
CREATE INDEX networks_account ON networks (account_id);
