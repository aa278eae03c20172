//! The token-response classifier: any answer from a token endpoint, for every shipped
//! integration, with and without its rules: no panic, tokens only from a 2xx JSON object or
//! form with a non-empty `access_token` (and storable), and such a response is tokens unless
//! a token rule objects.
#![no_main]

mod common;
#[path = "../../tests/props/mod.rs"]
mod props;

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::let_engine_panics_be_caught(), |data: &[u8]| {
    let input = common::parse(data);
    let status = http::StatusCode::from_u16(input.status).expect("100..=999");
    let headers = props::header_map(&input.headers);
    for client in props::clients() {
        if let Err(e) = props::check_token_response(client, status, &headers, &input.body) {
            panic!("{}: {e}", client.rules.integration);
        }
    }
});
