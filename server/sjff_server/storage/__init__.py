"""Durable learning state: update records, the update log, snapshots, recovery, repair."""
