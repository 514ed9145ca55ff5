-- An office's reservations of a day in the order they were made: one index in place of
-- reservations_by_service_point (office_id, service_point_id, local_date, state) and
-- reservations_by_office_seq (office_id, office_seq).
--
-- ListReservations (one office and day, newest first, by office_seq) reads it directly. The
-- per-reason counts of a service point's day (only for policies with reason caps) read the
-- office's reservations of that day through it; the office's stock bounds how many there are.
--
-- Why: every new reservation lands at the end of this index, while the old per-service-point
-- index had one insertion point per (service point, day, state). At 16 service points it dirtied
-- about 22 of the 65 pages a batch of 20 Reserves wrote to the WAL. Dropping it and the old
-- office-sequence index gave 13% more Reserve throughput on SQLite (BENCHMARKS.md).
CREATE INDEX reservations_by_office_day ON reservations (office_id, local_date, office_seq);
DROP INDEX reservations_by_service_point;
DROP INDEX reservations_by_office_seq;
