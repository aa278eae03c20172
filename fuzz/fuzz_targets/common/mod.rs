//! Input decoding shared by the targets, and the panic hook they install.
//!
//! `rule_input` and `token_response` read a response in a small text format that is easy to
//! seed and for libFuzzer to mutate:
//!
//! ```text
//! <status> <METHOD> <path> [gzip|deflate [<cut>]]
//! name: value          (header lines; any bytes, non-UTF-8 included)
//!
//! body bytes
//! ```
//!
//! Method `TOKEN` means the OAuth token endpoint. `gzip`/`deflate` compress the body (and
//! claim it in `content-encoding`); `<cut>` then truncates the compressed stream.

#![allow(dead_code)] // each target takes what it needs

use std::io::Write as _;

use grantd::rules::Endpoint;

pub struct Input {
    pub endpoint: Endpoint,
    pub status: u16,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

pub fn parse(data: &[u8]) -> Input {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], data[i + 2..].to_vec()),
        None => (data, Vec::new()),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let status = words
        .next()
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|w| w.parse::<u16>().ok())
        .filter(|s| (100..=999).contains(s))
        .unwrap_or(200);
    let method = words
        .next()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .unwrap_or_else(|| "GET".into());
    let mut path = words
        .next()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .unwrap_or_default();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let coding = words.next().map(<[u8]>::to_vec);
    let cut = words
        .next()
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|w| w.parse::<usize>().ok());

    let mut headers = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            continue;
        }
        let value: Vec<u8> = line[colon + 1..]
            .iter()
            .skip_while(|&&b| b == b' ')
            .map(|&b| {
                if (b < 0x20 && b != b'\t') || b == 0x7f {
                    b'x'
                } else {
                    b
                }
            })
            .collect();
        headers.push((name, value));
    }

    let endpoint = if method == "TOKEN" {
        Endpoint::Token
    } else {
        Endpoint::Api
    };
    let body = match coding.as_deref() {
        Some(b"gzip") | Some(b"deflate") => {
            let gzip = coding.as_deref() == Some(b"gzip");
            let mut out = compress(&body, gzip);
            if let Some(cut) = cut {
                out.truncate(cut % (out.len() + 1));
            }
            headers.retain(|(n, _)| n != "content-encoding");
            let claim = if gzip { "gzip" } else { "deflate" };
            headers.push(("content-encoding".into(), claim.as_bytes().to_vec()));
            out
        }
        _ => body,
    };
    Input {
        endpoint,
        status,
        method: if endpoint == Endpoint::Token {
            "POST".into()
        } else {
            method
        },
        path,
        headers,
        body,
    }
}

fn compress(body: &[u8], gzip: bool) -> Vec<u8> {
    use flate2::{write::GzEncoder, write::ZlibEncoder, Compression};
    if gzip {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(body).expect("in-memory");
        e.finish().expect("in-memory")
    } else {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::fast());
        e.write_all(body).expect("in-memory");
        e.finish().expect("in-memory")
    }
}

/// libfuzzer-sys aborts on every panic, even one that is caught. grantd catches the JSONata
/// engine's panics by design (`Program::compile`/`eval` turn them into errors; a target then
/// fails on an "engine panicked" rule error itself), so panics raised inside the engine's
/// code are let through to those handlers; any other panic aborts as usual.
pub fn let_engine_panics_be_caught() {
    let abort = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|l| l.file().contains("jsonata"))
        {
            return;
        }
        abort(info);
    }));
}
