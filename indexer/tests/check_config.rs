//! `sluice-indexer --check-config`: the shared suite of `common/test-support/check_config_suite.rs`.

const BIN: &str = env!("CARGO_BIN_EXE_sluice-indexer");

include!("../../common/test-support/check_config_suite.rs");
