-- IKD referrals given per office, local day and cause: the ledger records stock movements and
-- IKD activations but not referrals (a referral moves no blank), and the daily stock report
-- counts them. Incremented in the same transaction that gives the referral answer, so a stored
-- (replayed) answer is never counted twice. Days before this migration have no rows.
CREATE TABLE ikd_referral_days (
    office_id  TEXT   NOT NULL,
    local_date TEXT   NOT NULL,
    cause      BIGINT NOT NULL,
    referrals  BIGINT NOT NULL,
    PRIMARY KEY (office_id, local_date, cause),
    CHECK (referrals >= 0)
);
