//! One integration-test binary (shared build), one module per area.

mod storage;
