//! `ops`: the optional listener for probes and scrapes (`/_grantd/healthz`, `readyz`,
//! `metrics` and nothing else), so that the proxy itself can stay on loopback while the
//! kubelet and Prometheus reach grantd on the pod IP.
//!
//! Owns the key and its address check; serving it is `proxy`'s and `app`'s.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Where probes and scrapes connect (e.g. `0.0.0.0:9180`). Off when absent.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

impl OpsConfig {
    /// Refuses an address another listener already takes: `(key, address)` of each one served.
    /// Port 0 never clashes (the kernel picks a free port for each).
    pub(super) fn validate(&self, others: &[(&str, SocketAddr)]) -> Result<(), String> {
        let Some(ops) = self.listen else {
            return Ok(());
        };
        for (key, other) in others {
            if ops.port() != 0 && overlaps(ops, *other) {
                return Err(format!(
                    "ops.listen: {ops} is also {key} ({other}); the ops listener needs a port of its own, e.g. 0.0.0.0:9180"
                ));
            }
        }
        Ok(())
    }
}

/// Same port on the same address, or on a wildcard address that includes the other.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, &|_| None)
    }

    #[test]
    fn ops_listener_is_off_by_default_and_takes_an_address() {
        assert_eq!(parse("").unwrap().ops.listen, None);
        let c = parse("ops: { listen: 0.0.0.0:9180 }\n").unwrap();
        assert_eq!(c.ops.listen, Some("0.0.0.0:9180".parse().unwrap()));
    }

    #[test]
    fn ops_address_of_the_proxy_or_admin_listener_is_refused() {
        let bad = [
            ("ops: { listen: 127.0.0.1:4180 }", "listen (127.0.0.1:4180)"),
            ("ops: { listen: 0.0.0.0:4180 }", "listen (127.0.0.1:4180)"),
            (
                "admin: { listen: 127.0.0.1:4181, token: t }\nops: { listen: 127.0.0.1:4181 }",
                "admin.listen (127.0.0.1:4181)",
            ),
            (
                "connect: { listen: \"0.0.0.0:4182\", public_url: \"https://c.example\" }\nops: { listen: 10.0.0.1:4182 }",
                "connect.listen (0.0.0.0:4182)",
            ),
        ];
        for (text, expected) in bad {
            let e = parse(text).unwrap_err();
            assert!(
                e.starts_with("ops.listen: ") && e.contains(expected),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn ops_address_may_share_a_port_number_only_on_other_addresses_or_port_zero() {
        assert!(parse("ops: { listen: 127.0.0.2:4180 }").is_ok());
        // The admin API is off without a token: its address is not taken.
        assert!(parse("ops: { listen: 127.0.0.1:4181 }").is_ok());
        assert!(parse("listen: 127.0.0.1:0\nops: { listen: 127.0.0.1:0 }").is_ok());
    }

    #[test]
    fn ops_typos_and_bad_addresses_name_the_key() {
        let e = parse("ops: { lisen: 0.0.0.0:9180 }").unwrap_err();
        assert!(e.contains("ops") && e.contains("lisen"), "{e}");
        let e = parse("ops: { listen: localhost }").unwrap_err();
        assert!(e.contains("ops.listen"), "{e}");
    }
}
