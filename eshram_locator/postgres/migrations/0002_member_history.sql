-- One summary per member instead of one row per collection (issue 5: the hot path read every
-- observation of every worker it recomputed). The summary is eshram_locator/domain/history.py's
-- MemberHistory as JSON text in a bytea (parsed by the locator, never by SQL at run time):
--   {"s": [digest of each counted "source/transaction_id", ...],
--    "m": {"YYYY-MM": [transactions, [fps_id, ...],
--                      [[state, district, presence count, latest µs, latest key,
--                        subdistrict, village, pincode], ...]]}}
-- Existing observations are folded into it here, the same way MemberHistory.add does.

ALTER TABLE members ADD COLUMN history bytea;
-- The hot path rewrites history only: leave room on each page for HOT updates.
ALTER TABLE members SET (fillfactor = 70);

WITH keyed AS (
    SELECT member_ref, allocation_month::text AS month, fps_id, state_lgd, district_lgd,
           subdistrict_lgd, village_town_lgd, pincode,
           source || '/' || transaction_id AS tx_key,
           (extract(epoch FROM transacted_at) * 1000000)::bigint AS at_us,
           auth_mode IN ('FINGERPRINT', 'IRIS', 'FACE') AS presence
    FROM observations
),
places AS (
    SELECT member_ref, month, state_lgd, district_lgd,
           jsonb_set(
               (array_agg(
                   jsonb_build_array(state_lgd, district_lgd, 0, at_us, tx_key,
                                     subdistrict_lgd, village_town_lgd, pincode)
                   ORDER BY at_us DESC, tx_key COLLATE "C" DESC))[1],
               '{2}', to_jsonb(count(*))) AS place
    FROM keyed WHERE presence
    GROUP BY member_ref, month, state_lgd, district_lgd
),
month_places AS (
    SELECT member_ref, month, jsonb_agg(place ORDER BY state_lgd, district_lgd) AS places
    FROM places GROUP BY member_ref, month
),
month_shops AS (
    SELECT member_ref, month, count(*) AS transactions,
           jsonb_agg(DISTINCT fps_id COLLATE "C") AS shops
    FROM keyed GROUP BY member_ref, month
),
months AS (
    SELECT s.member_ref,
           jsonb_object_agg(s.month, jsonb_build_array(
               s.transactions,
               (SELECT coalesce(jsonb_agg(shop ORDER BY shop::text COLLATE "C"), '[]'::jsonb)
                FROM jsonb_array_elements(s.shops) AS shop),
               coalesce(p.places, '[]'::jsonb))) AS months
    FROM month_shops s LEFT JOIN month_places p USING (member_ref, month)
    GROUP BY s.member_ref
),
seen AS (
    SELECT member_ref,
           jsonb_agg(('x' || left(encode(sha256(convert_to(tx_key, 'UTF8')), 'hex'), 16))
                     ::bit(64)::bigint) AS digests
    FROM keyed GROUP BY member_ref
)
UPDATE members AS m
SET history = convert_to(jsonb_build_object('s', seen.digests, 'm', months.months)::text, 'UTF8')
FROM seen JOIN months USING (member_ref)
WHERE m.member_ref = seen.member_ref;

DROP TABLE observations;

-- What the hot path needs of a registration, as JSON text (the Avro record stays in
-- `registration`): {"p": permanent, "r": present or null, "s": sms_reachable,
-- "u": updated_at in µs}, each location [state, district, subdistrict, village, pincode].
-- NULL for rows written before this migration: the locator then reads `registration`.
ALTER TABLE workers ADD COLUMN profile bytea;
-- The ids of the worker's active changes (location_changes.active), so that a recomputation
-- whose result is unchanged never reads location_changes.
ALTER TABLE workers ADD COLUMN active_event_ids text[] NOT NULL DEFAULT '{}';
ALTER TABLE workers SET (fillfactor = 80);
UPDATE workers AS w
SET active_event_ids = c.ids
FROM (SELECT uan, array_agg(event_id::text ORDER BY effective_month, event_id) AS ids
      FROM location_changes WHERE active GROUP BY uan) AS c
WHERE w.uan = c.uan;
