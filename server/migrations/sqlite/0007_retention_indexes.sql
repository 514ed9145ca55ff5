-- The hourly retention purge (--nik-retention-days) finds stored answers and IKD activations
-- older than its cutoff by their time. Without these indexes each purge read the whole of both
-- tables to prove nothing more was due: every Reserve and Commit stores an answer, so that was
-- every call of the retention window, once an hour. With them a purge reads the rows it deletes,
-- in reads of at most 500, the last of which finds fewer.
--
-- The times only grow, so each new row lands at the end of its index: one more append per
-- stored answer (made when the Reserve journal is folded, not in the burst's batch).
CREATE INDEX idempotency_by_created ON idempotency (created_ms);
CREATE INDEX ikd_activations_by_time ON ikd_activations (activated_ms);
