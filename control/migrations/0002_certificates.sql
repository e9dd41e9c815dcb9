-- Certificates: each hub's CA and each device's current certificate.
-- The same portable SQL as 0001 (TEXT, BIGINT microseconds, BOOLEAN).
-- The runner splits files at semicolons, so none may appear in a literal or a comment.

-- A hub's CA: the managed one the hub made (key_pem holds its private key, in plain text)
-- or a custom one the user uploaded (key_pem NULL: the hub never sees that key).
CREATE TABLE hub_cas (
    hub_id TEXT PRIMARY KEY REFERENCES hubs (id),
    cert_pem TEXT NOT NULL,
    key_pem TEXT,
    is_custom BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);

-- A device's current certificate: issued by its hub's managed CA, or a custom one the
-- user set. The device is pinned to it by fingerprint (lowercase hex SHA-256 of the DER),
-- unique so that one certificate never identifies two devices. Device keys are never
-- stored.
CREATE TABLE device_certificates (
    device_id TEXT PRIMARY KEY REFERENCES devices (id),
    cert_pem TEXT NOT NULL,
    fingerprint_sha256 TEXT NOT NULL,
    is_custom BOOLEAN NOT NULL,
    not_after BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX device_certificates_fingerprint ON device_certificates (fingerprint_sha256);
