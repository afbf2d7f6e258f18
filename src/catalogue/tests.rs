//! Store tests on real SQLite files.
