//! The rule-file loader: any text either loads, or fails with errors that each name the file
//! and a line of it (`rules/fz.yaml:N: ...`).
#![no_main]

mod common;
#[path = "../../tests/props/mod.rs"]
mod props;

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::let_engine_panics_be_caught(), |data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = props::check_rule_file(&text) {
        panic!("{e}");
    }
});
