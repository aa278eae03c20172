//! The rule input builder: any response (status, headers incl. non-UTF-8 values, body bytes,
//! gzip/deflate claims) through the proxy's path into every shipped rule set returns an
//! outcome the proxy can apply, and the document the rules see is exactly the response.
#![no_main]

mod common;
#[path = "../../tests/props/mod.rs"]
mod props;

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: common::let_engine_panics_be_caught(), |data: &[u8]| {
    let input = common::parse(data);
    let response = props::Response {
        endpoint: input.endpoint,
        status: input.status,
        headers: input.headers,
        body: input.body,
        method: input.method,
        path: input.path,
    };
    if let Err(e) = props::check_shipped_rules(&response) {
        panic!("{e}");
    }
    if let Err(e) = props::check_rules_see_the_response(&response) {
        panic!("{e}");
    }
});
