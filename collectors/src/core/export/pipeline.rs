//! Queues, retries and self-metrics around every sink. Placeholder: no sink is configured yet.
