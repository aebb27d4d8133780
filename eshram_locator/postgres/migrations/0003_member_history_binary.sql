-- Member histories in the stored form of MemberHistory.to_bytes (issue 5: a batch parsed and
-- re-serialised each member's whole JSON summary to add one collection; now it parses only
-- the months it touches and writes the others back as they were read):
--   format tag 1 (1 byte), digest count (int4), each digest (int8, big-endian), then one line
--   per month in month order, separated by a newline: "YYYY-MM", "1" if the month has
--   presence else "0", the month's summary as JSON (migration 0002's shape).
WITH stored AS (
    SELECT member_ref, convert_from(history, 'UTF8')::jsonb AS h
    FROM members WHERE history IS NOT NULL
),
months AS (
    SELECT s.member_ref,
           string_agg(convert_to(e.key, 'UTF8')
                      || CASE WHEN jsonb_array_length(e.value -> 2) > 0
                              THEN '\x31'::bytea ELSE '\x30'::bytea END
                      || convert_to(e.value::text, 'UTF8'),
                      '\x0a'::bytea ORDER BY e.key) AS lines
    FROM stored AS s, jsonb_each(s.h -> 'm') AS e
    GROUP BY s.member_ref
),
digests AS (
    SELECT s.member_ref, count(*) AS digests,
           string_agg(int8send(d.value::bigint), ''::bytea ORDER BY d.ordinality) AS packed
    FROM stored AS s, jsonb_array_elements_text(s.h -> 's') WITH ORDINALITY AS d(value, ordinality)
    GROUP BY s.member_ref
)
UPDATE members AS m
SET history = '\x01'::bytea
    || int4send(coalesce(d.digests, 0)::int) || coalesce(d.packed, ''::bytea)
    || coalesce(mo.lines, ''::bytea)
FROM stored AS s
LEFT JOIN digests AS d USING (member_ref)
LEFT JOIN months AS mo USING (member_ref)
WHERE m.member_ref = s.member_ref;

-- How many transactions a stored history counts (its digest count), for operators and checks.
CREATE FUNCTION history_transactions(history bytea) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ('x' || encode(substring(history FROM 2 FOR 4), 'hex'))::bit(32)::integer $$;
