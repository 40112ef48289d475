//! jcemu integration tests (one test binary).

mod ad;
mod channel;
mod common;
mod conformance;
mod faults;
mod groups;
mod throughput;
mod transport;
mod users;
