-- LoRaWAN devices of LoRaWAN networks: the keys the hub checks raw PHYPayloads with (an AppKey
-- for join-requests, ABP session keys for data frames) and the uplink frame counter, so a
-- restart does not reopen replays. EUIs, DevAddr and keys are lowercase hex.
CREATE TABLE lorawan_devices (
    network_id TEXT NOT NULL REFERENCES networks (id),
    dev_eui TEXT NOT NULL,
    hub_id TEXT NOT NULL REFERENCES hubs (id),
    account_id TEXT NOT NULL REFERENCES accounts (id),
    join_eui TEXT,
    app_key TEXT,
    dev_addr TEXT,
    nwk_s_key TEXT,
    app_s_key TEXT,
    f_cnt_up BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (network_id, dev_eui)
);

CREATE UNIQUE INDEX lorawan_devices_dev_addr ON lorawan_devices (network_id, dev_addr);
CREATE INDEX lorawan_devices_hub ON lorawan_devices (hub_id);
