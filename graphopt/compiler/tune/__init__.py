"""MetaSchedule tuning with a shared cache: records, candidates, transfer, repair, progress."""
