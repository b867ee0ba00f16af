//! Bulkhead's policy library (being built: issue 2).
