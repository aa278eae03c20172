//! `connect.branding`: how the public connect pages present the app to its users (name, logo,
//! accent colour, where to get help). Operator-supplied, checked once at startup; the pages
//! still escape every value. Owns the values and their checks only; rendering is the connect
//! module's.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrandingConfig {
    /// The app's name as its users know it ("Acme CRM"). Without it, pages say "the app".
    #[serde(default)]
    pub app_name: Option<String>,
    /// An https URL of the app's logo. The pages' CSP allows images from its origin only.
    #[serde(default)]
    pub logo_url: Option<String>,
    /// The button colour, `#rgb` or `#rrggbb`; its text is black or white, whichever contrasts more.
    #[serde(default)]
    pub accent_color: Option<String>,
    /// Where users get help: an https URL or an email address.
    #[serde(default)]
    pub support: Option<String>,
}

impl BrandingConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(name) = &self.app_name {
            if name.trim().is_empty() || name.chars().count() > 80 {
                return Err("connect.branding.app_name must be 1 to 80 characters".into());
            }
        }
        if let Some(logo) = &self.logo_url {
            https_url(logo).map_err(|e| format!("connect.branding.logo_url: `{logo}` {e}"))?;
        }
        if let Some(c) = &self.accent_color {
            rgb(c).ok_or_else(|| {
                format!(
                    "connect.branding.accent_color: `{c}` must be a colour like #0b57d0 or #06c"
                )
            })?;
        }
        if let Some(s) = &self.support {
            if !is_email(s) {
                https_url(s).map_err(|_| {
                    format!(
                        "connect.branding.support: `{s}` must be an https URL or an email address"
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The logo's origin (`https://cdn.example.com`), the one image source the CSP allows.
    pub fn logo_origin(&self) -> Option<String> {
        let u = url::Url::parse(self.logo_url.as_deref()?).ok()?;
        Some(u.origin().ascii_serialization())
    }

    /// The accent colour as red, green, blue.
    pub fn accent_rgb(&self) -> Option<[u8; 3]> {
        rgb(self.accent_color.as_deref()?)
    }

    /// The support contact as a link target: `mailto:` for an address, else the URL.
    pub fn support_href(&self) -> Option<String> {
        let s = self.support.as_deref()?;
        Some(if is_email(s) {
            format!("mailto:{s}")
        } else {
            s.to_string()
        })
    }
}

fn https_url(s: &str) -> Result<(), String> {
    match url::Url::parse(s) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => Ok(()),
        Ok(_) => Err("must be an https URL with a host".into()),
        Err(e) => Err(format!("is not a URL: {e}")),
    }
}

/// `local@domain`, no spaces and nothing that would change a `mailto:` link's meaning.
fn is_email(s: &str) -> bool {
    let bad = |c: char| c.is_whitespace() || matches!(c, '?' | '&' | '/' | ':' | '<' | '>' | '"');
    matches!(s.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !d.contains('@'))
        && !s.chars().any(bad)
}

fn rgb(s: &str) -> Option<[u8; 3]> {
    let hex = s.strip_prefix('#')?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize, len: usize| u8::from_str_radix(&hex[i * len..(i + 1) * len], 16).ok();
    match hex.len() {
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        6 => Some([digit(0, 2)?, digit(1, 2)?, digit(2, 2)?]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branding(yaml: &str) -> Result<BrandingConfig, String> {
        let b: BrandingConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        b.validate().map(|()| b)
    }

    #[test]
    fn branding_values_are_checked_and_read() {
        let b = branding("{ app_name: Acme, logo_url: \"https://cdn.acme.example:8443/l.png?v=2\", accent_color: \"#06c\", support: help@acme.example }").unwrap();
        assert_eq!(
            b.logo_origin().as_deref(),
            Some("https://cdn.acme.example:8443")
        );
        assert_eq!(b.accent_rgb(), Some([0, 0x66, 0xcc]));
        assert_eq!(
            b.support_href().as_deref(),
            Some("mailto:help@acme.example")
        );
        let b = branding("{ support: \"https://acme.example/help\" }").unwrap();
        assert_eq!(
            b.support_href().as_deref(),
            Some("https://acme.example/help")
        );
        assert_eq!(
            branding("{ accent_color: \"#0B57D0\" }")
                .unwrap()
                .accent_rgb(),
            Some([11, 87, 208])
        );
        for (bad, want) in [
            (
                "{ logo_url: \"http://acme.example/l.png\" }",
                "connect.branding.logo_url: `http://acme.example/l.png` must be an https URL",
            ),
            (
                "{ accent_color: red }",
                "connect.branding.accent_color: `red` must be a colour",
            ),
            (
                "{ accent_color: \"#12345\" }",
                "connect.branding.accent_color",
            ),
            (
                "{ support: \"help@acme.example?subject=x\" }",
                "connect.branding.support",
            ),
            (
                "{ support: \"javascript:alert(1)\" }",
                "connect.branding.support",
            ),
            (
                "{ app_name: \"  \" }",
                "connect.branding.app_name must be 1 to 80",
            ),
        ] {
            let e = branding(bad).unwrap_err();
            assert!(e.starts_with(want), "{bad}: {e}");
        }
    }
}
