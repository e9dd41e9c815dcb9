-- The metrics API's rings (see control/src/metrics.rs): one row per hub or device and
-- resolution, holding the intervals of that ring as compact JSON [[index, messages,
-- active_devices], ...]. Rows are rewritten whole when their ring changed. hub_id is the
-- hub itself, or the hub of the device's latest activity. No foreign keys: the rows of a
-- deleted hub or device are deleted in the same transaction by the store.
-- The same portable SQL as 0001 (TEXT, BIGINT microseconds).
-- The runner splits files at semicolons, so none may appear in a literal or a comment.

CREATE TABLE metric_rings (
    object_type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    resolution TEXT NOT NULL,
    hub_id TEXT NOT NULL,
    buckets TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (object_type, object_id, resolution)
);
