-- The month of the last line of each member history, beside it (issue 5): a batch appends a
-- member's collections of months after every stored one without reading the history
-- (LocatorStore.append_histories), and that needs to know, in the statement, that they are.
-- Written with the history by every statement that writes it (save_histories,
-- append_histories, delete_workers); NULL when there is no history. A history without it is
-- never appended to: it is read, as before.
ALTER TABLE members ADD COLUMN history_last_month text;

UPDATE members
SET history_last_month = left(split_part(
        convert_from(substring(history FROM 6 + 8 * history_transactions(history)), 'UTF8'),
        E'\n', -1), 7)
WHERE history IS NOT NULL AND length(history) > 5 + 8 * history_transactions(history);
