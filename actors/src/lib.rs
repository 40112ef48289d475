//! forestsync engine.
