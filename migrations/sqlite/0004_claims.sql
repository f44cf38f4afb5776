-- Claims carry an owner and an expiry. A delivery's `claimed` now holds when its claim
-- expires (unix ms; 0 while unclaimed), so every `claimed = 0` test keeps its meaning
-- and its index. A send's claim is kept in its row (it was kept in memory).
ALTER TABLE sends ADD COLUMN claimed_by TEXT;
ALTER TABLE sends ADD COLUMN claimed_until INTEGER NOT NULL DEFAULT 0;
