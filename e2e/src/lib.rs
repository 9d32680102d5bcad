//! End-to-end tests against real peers live in `tests/`.
