-- Two indexes of `workers` that no statement uses (issue 5). Every statement finds a worker
-- by uan (the primary key); members are found by member_ref on `members`. Each index cost an
-- entry per registration, and `workers_current_district` made every update of a worker's
-- derived district a non-HOT update (new entries in all three indexes, a new row version the
-- primary key points at).
DROP INDEX workers_member_ref;
DROP INDEX workers_current_district;
