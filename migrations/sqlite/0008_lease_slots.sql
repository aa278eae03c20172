-- The fleet-wide cap on concurrent refreshes, as `cap` slots per integration (issue 14). A slot
-- names the connection and lease owner that took it; it is live while that connection's lease is
-- still that owner's and unexpired, so releasing or overwriting a lease frees its slot with no
-- write here. Counting live leases reads at most `cap` slots and as many primary-key lookups,
-- whatever the table's size. It replaces the partial index of 0007, which on PostgreSQL kept
-- an entry for every lease taken since the last VACUUM (39,000 dead entries made each count
-- take 7-119 ms during a fleet drain at 1M connections, against 0.06 ms after VACUUM).
-- Slots are updated in place (no indexed column changes), so they stay a few pages.
DROP INDEX connections_leased;
CREATE TABLE lease_slots (
    integration TEXT NOT NULL,
    slot INTEGER NOT NULL,
    connection TEXT,
    owner TEXT,
    PRIMARY KEY (integration, slot)
);
