-- The key that hashes NIKs, recognised again: a keyed hash of a fixed text (it reveals nothing
-- of the key). A server started with another key (a second replica given the wrong file, a
-- backup restored beside the wrong key) would hash every NIK differently: the same person could
-- reserve twice the same day and retries would not find their answers, with nothing to show
-- for it. So the server refuses to start then, unless told that the key was changed on purpose
-- (--nik-key-changed, README: "The NIK key").
CREATE TABLE nik_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT    NOT NULL,
    set_ms      BIGINT  NOT NULL
);
