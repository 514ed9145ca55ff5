-- The Reserve journal (store/journal.rs): under a burst, a Reserve batch writes its new ledger
-- entries, reservations and stored answers as one row here, in the transaction that decides it,
-- and they are moved into their tables ("folded") when the burst pauses, and before any other
-- transaction or read of those tables. Empty whenever no burst is in progress.
CREATE TABLE reserve_journal (
    seq          INTEGER PRIMARY KEY,
    -- The batch's rows, table by table (format: store/journal.rs, `encode`).
    body         BLOB   NOT NULL,
    -- Reservations the row makes (the journal's bound counts them).
    reservations BIGINT NOT NULL
);
