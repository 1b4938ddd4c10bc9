-- cohort_bitmaps: leave half of each page free, so that rewriting a block (every import
-- rewrites the 1 KiB blocks its users fall in) can put the new version on the same page:
-- a HOT update, with no new index entry and a smaller WAL record.
ALTER TABLE cohort_bitmaps SET (fillfactor = 50);
