-- blangko schema. Kept identical to migrations/postgres/0001_schema.sql except for column types
-- the two engines spell differently (BLOB vs BYTEA).

-- An office holds the stock. Every Reserve locks its row first, so the office row is where
-- decisions about one office serialize (PostgreSQL: SELECT ... FOR UPDATE; SQLite: one writer).
CREATE TABLE offices (
    office_id                 TEXT    PRIMARY KEY,
    name                      TEXT    NOT NULL,
    time_zone                 TEXT    NOT NULL,
    province_code             TEXT    NOT NULL,
    daily_cap                 BIGINT  NOT NULL DEFAULT 0,
    expected_next_supply_date TEXT    NOT NULL DEFAULT '',
    fallback_horizon_days     BIGINT  NOT NULL DEFAULT 10,
    ikd_first_required        BIGINT  NOT NULL DEFAULT 0,
    hold_ttl_secs             BIGINT  NOT NULL DEFAULT 1800,
    on_hand                   BIGINT  NOT NULL DEFAULT 0,
    held                      BIGINT  NOT NULL DEFAULT 0,
    ledger_seq                BIGINT  NOT NULL DEFAULT 0,
    ledger_head               TEXT    NOT NULL,
    CHECK (on_hand >= 0),
    CHECK (held >= 0),
    CHECK (held <= on_hand)
);

CREATE TABLE service_points (
    office_id        TEXT   NOT NULL REFERENCES offices (office_id),
    service_point_id TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    kind             BIGINT NOT NULL,
    service_days     TEXT   NOT NULL,
    holidays         TEXT   NOT NULL,
    quota_mode       BIGINT NOT NULL,
    weight           BIGINT NOT NULL,
    policy           BLOB   NOT NULL,
    PRIMARY KEY (office_id, service_point_id)
);

-- One row per service point and office-local day, created by the first transaction that touches
-- that day: the day's quota is computed once and kept, whichever replica computes it.
CREATE TABLE quota_days (
    office_id         TEXT   NOT NULL,
    service_point_id  TEXT   NOT NULL,
    local_date        TEXT   NOT NULL,
    quota             BIGINT NOT NULL,
    held              BIGINT NOT NULL DEFAULT 0,
    committed         BIGINT NOT NULL DEFAULT 0,
    priority_used     BIGINT NOT NULL DEFAULT 0,
    closed            BIGINT NOT NULL DEFAULT 0,
    supply_overdue    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (office_id, service_point_id, local_date),
    CHECK (held >= 0),
    CHECK (committed >= 0),
    -- The quota invariant, enforced by the database as a last line of defence.
    CHECK (held + committed <= quota)
);

CREATE TABLE reservations (
    reservation_id   TEXT   PRIMARY KEY,
    office_id        TEXT   NOT NULL,
    -- The office ledger's sequence number of the RESERVE entry: orders an office's
    -- reservations exactly, even when several are made in the same millisecond.
    office_seq       BIGINT NOT NULL,
    service_point_id TEXT   NOT NULL,
    counter_id       TEXT   NOT NULL,
    local_date       TEXT   NOT NULL,
    nik_hash         TEXT   NOT NULL,
    masked_nik       TEXT   NOT NULL,
    reason           BIGINT NOT NULL,
    priority         BIGINT NOT NULL,
    ikd_status       BIGINT NOT NULL,
    state            TEXT   NOT NULL,
    created_ms       BIGINT NOT NULL,
    expires_ms       BIGINT NOT NULL,
    committed_ms     BIGINT NOT NULL DEFAULT 0,
    spoiled_count    BIGINT NOT NULL DEFAULT 0
);
-- One person, one blank a day, across the whole deployment (DESIGN rule 7).
CREATE UNIQUE INDEX reservations_one_live_per_nik_day
    ON reservations (nik_hash, local_date) WHERE state IN ('HELD', 'COMMITTED');
CREATE INDEX reservations_by_service_point ON reservations (office_id, service_point_id, local_date, state);
CREATE INDEX reservations_due ON reservations (state, expires_ms);
CREATE INDEX reservations_by_office_seq ON reservations (office_id, office_seq);

-- Answers to mutating calls, by request_id, so that a retry gets the first answer again.
CREATE TABLE idempotency (
    request_id  TEXT   PRIMARY KEY,
    method      TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    response    BLOB   NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- Delivery references already recorded (a shipment is idempotent by its reference too).
CREATE TABLE shipments (
    office_id   TEXT   NOT NULL,
    reference   TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    ledger_seq  BIGINT NOT NULL,
    PRIMARY KEY (office_id, reference)
);

CREATE TABLE ikd_activations (
    nik_hash     TEXT   PRIMARY KEY,
    office_id    TEXT   NOT NULL,
    masked_nik   TEXT   NOT NULL,
    activated_ms BIGINT NOT NULL
);

CREATE TABLE queue_reports (
    office_id        TEXT   NOT NULL,
    service_point_id TEXT   NOT NULL,
    counter_id       TEXT   NOT NULL,
    waiting          BIGINT NOT NULL,
    reported_ms      BIGINT NOT NULL,
    PRIMARY KEY (office_id, service_point_id, counter_id)
);

-- The append-only, hash-chained ledger: one chain per office.
CREATE TABLE ledger (
    office_id             TEXT   NOT NULL,
    seq                   BIGINT NOT NULL,
    kind                  BIGINT NOT NULL,
    recorded_ms           BIGINT NOT NULL,
    local_date            TEXT   NOT NULL,
    principal             TEXT   NOT NULL,
    on_hand_delta         BIGINT NOT NULL,
    held_delta            BIGINT NOT NULL,
    on_hand_after         BIGINT NOT NULL,
    held_after            BIGINT NOT NULL,
    service_point_id      TEXT   NOT NULL,
    reservation_id        TEXT   NOT NULL,
    reference             TEXT   NOT NULL,
    counterpart_office_id TEXT   NOT NULL,
    note                  TEXT   NOT NULL,
    masked_nik            TEXT   NOT NULL,
    previous_hash         TEXT   NOT NULL,
    hash                  TEXT   NOT NULL,
    PRIMARY KEY (office_id, seq)
);
CREATE INDEX ledger_by_day ON ledger (office_id, local_date, kind);
