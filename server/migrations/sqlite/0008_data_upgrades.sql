-- One-off changes to stored data that a server makes at start, in Rust, where SQL alone cannot
-- (a keyed hash needs the NIK key, which the database never holds): a row per change once it is
-- done, so that later starts skip it (server/src/upgrades.rs).
CREATE TABLE data_upgrades (
    name    TEXT   PRIMARY KEY,
    done_ms BIGINT NOT NULL
);
