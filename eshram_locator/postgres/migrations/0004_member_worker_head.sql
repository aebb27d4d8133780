-- The head of each registered member's worker row, on the member row (issue 5): adding a
-- batch's collections reads, for every member it locks, the worker's current district and the
-- month of their latest re-baseline (rule 11). Reading them through a join with `workers` cost
-- an index probe and a heap fetch per member, scattered over the whole table at 10,000,000
-- workers; the member row is read and locked anyway.
--
-- A mirror, written by the statements that write what it mirrors (LocatorStore.save_workers,
-- update_derived, set_member_uans, delete_workers): while members.uan names a worker, the
-- three columns hold that worker's current_state_lgd, current_district_lgd and
-- baselines -> -1 ->> 0. NULL when the member has no worker, and for a moment inside a
-- registry batch, between a member being given a uan and the worker row being written.
ALTER TABLE members
    ADD COLUMN worker_state_lgd smallint,
    ADD COLUMN worker_district_lgd integer,
    ADD COLUMN worker_rebaseline text;

UPDATE members AS m
SET worker_state_lgd = w.current_state_lgd,
    worker_district_lgd = w.current_district_lgd,
    worker_rebaseline = w.baselines -> -1 ->> 0
FROM workers AS w
WHERE w.uan = m.uan;
