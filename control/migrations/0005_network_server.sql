-- LoRaWAN networks may push downlinks to their network server (ChirpStack v4 REST:
-- POST <ns_url>/api/devices/<dev_eui>/queue with "Authorization: Bearer <ns_token>"), the token
-- is kept as given (the hub sends it) and never shown. Without ns_url downlinks are polled.
ALTER TABLE networks ADD COLUMN ns_url TEXT;
ALTER TABLE networks ADD COLUMN ns_token TEXT;

-- The DevNonces of the join-requests the hub accepted from a LoRaWAN device (LoRaWAN 1.0.x:
-- a DevNonce is never used twice, and a replayed join-request is refused): 4 lowercase hex digits
-- each, every one followed by a comma.
ALTER TABLE lorawan_devices ADD COLUMN dev_nonces TEXT NOT NULL DEFAULT '';
