-- Live leases per integration, counted before every lease and claim: a partial index holds only
-- leased rows, so the count costs the number of leases, not the size of the integration.
CREATE INDEX connections_leased ON connections (integration, lease_until) WHERE lease_owner IS NOT NULL;
