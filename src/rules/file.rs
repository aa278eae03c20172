//! Loading `rules/{integration}.yaml`: YAML → typed spec → compiled [`RuleSet`].
//!
//! Every problem is reported as `file:line: rule 'name': what is wrong`, and all problems in a
//! directory are collected so a platform team sees every mistake in one run.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use super::engine::Program;
use super::spec::*;
pub use super::spec::{
    AuthSpec, CapturedResponse, ClientAuth, Expect, Inject, RateLimitScope, RateLimitSpec,
    RequestSpec, TestCase,
};
use super::{ContentTypeMatch, Endpoint, Matcher, Rule, RuleSet, StatusPattern};
use crate::template::{Hosts, Template};

/// Every problem found while loading a directory of rule files.
#[derive(Debug)]
pub struct LoadErrors(pub Vec<String>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.join("\n"))
    }
}

impl std::error::Error for LoadErrors {}

/// Loads every `*.yaml`/`*.yml` file in `dir`, keyed by integration name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, RuleSet>, LoadErrors> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        LoadErrors(vec![format!(
            "{}: cannot read rules directory: {e}",
            dir.display()
        )])
    })?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    let mut sets = BTreeMap::new();
    let mut errors = Vec::new();
    for path in paths {
        match load_file(&path) {
            Ok(set) => {
                if sets.contains_key(&set.integration) {
                    errors.push(format!(
                        "{}: integration `{}` is defined twice",
                        set.file, set.integration
                    ));
                } else {
                    sets.insert(set.integration.clone(), set);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    inherit_base(&mut sets);
    Ok(sets)
}

/// The integration name of the shared base file, `_base.yaml`: never a route.
pub const BASE: &str = "_base";

/// Appends the base's rules, renamed `_base.{rule}`, after each inheriting file's own: the
/// provider's rules speak first, the base catches what they leave (RFC 6750 challenges, 429/503,
/// GraphQL errors in a 200). The base set itself stays, so `check` runs its tests.
fn inherit_base(sets: &mut BTreeMap<String, RuleSet>) {
    let Some(base) = sets.get(BASE).map(|b| b.rules.clone()) else {
        return;
    };
    for (name, set) in sets.iter_mut() {
        if name != BASE && set.inherits_base {
            set.rules.extend(base.iter().cloned().map(|mut r| {
                r.name = format!("{BASE}.{}", r.name);
                r
            }));
        }
    }
}

/// Loads one rule file; all of its problems are returned together.
pub fn load_file(path: &Path) -> Result<RuleSet, Vec<String>> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| vec![format!("{file}: cannot read: {e}")])?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        // The prefix before the first bad byte is valid UTF-8.
        let before = std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or("");
        vec![format!(
            "{file}:{}: not UTF-8 text (byte {valid})",
            yaml_lines(before)
        )]
    })?;
    parse(&file, &text, path.file_stem().and_then(|s| s.to_str()))
}

/// The number of lines as the YAML parser counts them: it also breaks lines at a lone CR,
/// NEL, LS and PS, and a text without line breaks is one line.
fn yaml_lines(text: &str) -> usize {
    let mut prev = '\0';
    let mut breaks = 0;
    for c in text.chars() {
        if matches!(c, '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') || (c == '\n' && prev != '\r') {
            breaks += 1;
        }
        prev = c;
    }
    breaks + 1
}

/// Parses rule-file text. `stem` is the file name without extension, which must equal the
/// integration name (so `rules/slack.yaml` cannot silently define `github`).
pub fn parse(file: &str, text: &str, stem: Option<&str>) -> Result<RuleSet, Vec<String>> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let spec: FileSpec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // At the end of a file without a final newline the parser names the line after the
        // last one; name the last line instead.
        let line = inner
            .location()
            .map(|l| l.line())
            .unwrap_or(1)
            .clamp(1, yaml_lines(text));
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        vec![format!(
            "{file}:{line}: {at}{}",
            strip_location(&inner.to_string())
        )]
    })?;
    let lines = ItemLines::scan(text);
    let mut errors = check_head(file, &spec, stem);
    errors.extend(
        spec.naming_problems()
            .into_iter()
            .map(|p| format!("{file}:1: {p}")),
    );
    let has_token_url = spec.auth.is_some();
    errors.extend(
        spec.credentials
            .problems(has_token_url)
            .into_iter()
            .map(|p| format!("{file}:1: {p}")),
    );
    let rules = compile_rules(file, &spec.rules, &lines, &mut errors);
    let tests = collect_tests(file, spec.tests, &rules, &lines, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RuleSet {
        display_name: spec
            .display_name
            .unwrap_or_else(|| spec.integration.clone()),
        integration: spec.integration,
        file: file.to_string(),
        base_url: spec.base_url,
        description: spec.description,
        scope_descriptions: spec.scope_descriptions,
        allowed_hosts: spec.allowed_hosts,
        allow_http: spec.allow_http,
        inherits_base: spec.base,
        auth: spec.auth,
        credentials: spec.credentials,
        ratelimit: spec.ratelimit,
        rules,
        tests,
        restart_only: restart_only(text),
    })
}

/// The file's head: its name, allow-list, URL templates and `auth` section.
fn check_head(file: &str, spec: &FileSpec, stem: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if !valid_integration_name(&spec.integration) {
        errors.push(format!(
            "{file}:1: integration `{}` must be lower-case letters, digits, `-` or `_`",
            spec.integration
        ));
    }
    if let Some(stem) = stem {
        if stem != spec.integration {
            errors.push(format!(
                "{file}:1: integration `{}` must match the file name `{stem}`",
                spec.integration
            ));
        }
    }
    if let Err(e) = Hosts::new(&spec.allowed_hosts, spec.allow_http) {
        errors.push(format!("{file}:1: allowed_hosts: {e}"));
    }
    let mut urls = vec![("base_url", spec.base_url.as_str())];
    if let Some(auth) = &spec.auth {
        urls.push(("auth.token_url", &auth.token_url));
        for (key, url) in [
            ("auth.refresh_url", &auth.refresh_url),
            ("auth.revocation_url", &auth.revocation_url),
        ] {
            urls.extend(url.as_deref().map(|u| (key, u)));
        }
    }
    for (key, url) in urls {
        match Template::parse(url) {
            Err(e) => errors.push(format!("{file}:1: {key}: {e}")),
            Ok(t) if t.host_from_metadata() && spec.allowed_hosts.is_empty() => errors.push(format!(
                "{file}:1: {key}: connection metadata decides the host, so allowed_hosts must list where it may point"
            )),
            Ok(_) => {}
        }
    }
    if let Some(auth) = &spec.auth {
        if !auth.inject.format.contains("{access_token}") {
            errors.push(format!(
                "{file}:1: auth.inject.format must contain {{access_token}}"
            ));
        }
        for key in &auth.token_metadata {
            if matches!(key.as_str(), "access_token" | "refresh_token" | "id_token") {
                errors.push(format!(
                    "{file}:1: auth.token_metadata: `{key}` is a token; tokens are never metadata"
                ));
            }
        }
        if http::HeaderName::from_bytes(auth.inject.header.as_bytes()).is_err() {
            errors.push(format!(
                "{file}:1: auth.inject.header `{}` is not a header name",
                auth.inject.header
            ));
        }
    }
    errors
}

fn compile_rules(
    file: &str,
    specs: &[RuleSpec],
    lines: &ItemLines,
    errors: &mut Vec<String>,
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let line = lines.rule(i);
        let mut fail =
            |what: String| errors.push(format!("{file}:{line}: rule `{}`: {what}", spec.name));
        if spec.name.trim().is_empty() {
            fail("name must not be empty".into());
        }
        if rules.iter().any(|r| r.name == spec.name) {
            fail("a rule with this name already exists".into());
        }
        let matcher = match matcher_from(&spec.matcher, spec.on) {
            Ok(m) => m,
            Err(e) => {
                fail(format!("match: {e}"));
                continue;
            }
        };
        match Program::compile(&spec.expr) {
            Ok(program) => rules.push(Rule {
                name: spec.name.clone(),
                line,
                matcher,
                program,
            }),
            Err(e) => fail(format!("JSONata does not compile: {e}")),
        }
    }
    rules
}

fn matcher_from(spec: &MatchSpec, on: Endpoint) -> Result<Matcher, String> {
    let statuses = spec
        .status
        .iter()
        .map(|s| match s {
            StatusSpec::Code(c) if (100..=599).contains(c) => Ok(StatusPattern::Exact(*c)),
            // Compared as bytes: `c[1..]` would panic on a multi-byte first character.
            StatusSpec::Class(c)
                if c.len() == 3 && c.as_bytes()[1..].eq_ignore_ascii_case(b"xx") =>
            {
                match c.as_bytes()[0] {
                    d @ b'1'..=b'5' => Ok(StatusPattern::Class((d - b'0') as u16)),
                    _ => Err(format!("status class `{c}` must be 1xx to 5xx")),
                }
            }
            StatusSpec::Code(c) => Err(format!("status {c} is outside 100-599")),
            StatusSpec::Class(c) => Err(format!("`{c}` is not a status (use 401 or 4xx)")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let content_type = match spec.content_type.as_deref().map(str::to_ascii_lowercase) {
        None => ContentTypeMatch::Any,
        Some(s) if s == "any" || s == "*" => ContentTypeMatch::Any,
        Some(s) if s == "json" => ContentTypeMatch::Json,
        Some(s) if s.trim().is_empty() => return Err("content_type must not be empty".into()),
        Some(s) => ContentTypeMatch::Contains(s),
    };
    if let Some(p) = &spec.path_prefix {
        if !p.starts_with('/') {
            return Err(format!("path_prefix `{p}` must start with `/`"));
        }
    }
    Ok(Matcher {
        endpoint: on,
        statuses,
        content_type,
        path_prefix: spec.path_prefix.clone(),
        path_contains: spec.path_contains.clone(),
    })
}

fn collect_tests(
    file: &str,
    specs: Vec<TestSpec>,
    rules: &[Rule],
    lines: &ItemLines,
    errors: &mut Vec<String>,
) -> Vec<TestCase> {
    let mut tests = Vec::with_capacity(specs.len());
    for (i, spec) in specs.into_iter().enumerate() {
        let line = lines.test(i);
        let e = &spec.expect;
        if let Some(rule) = &e.rule {
            if !rules.iter().any(|r| &r.name == rule) {
                errors.push(format!(
                    "{file}:{line}: test `{}`: expects unknown rule `{rule}`",
                    spec.name
                ));
            }
        }
        let any_field = e.rule.is_some()
            || e.status.is_some()
            || e.action.is_some()
            || e.error.is_some()
            || e.retry_after.is_some();
        if e.unchanged == any_field {
            errors.push(format!(
                "{file}:{line}: test `{}`: expect either `unchanged: true` or at least one of rule/status/action/error/detail/retry_after",
                spec.name
            ));
        }
        tests.push(TestCase {
            name: spec.name,
            line,
            on: spec.on,
            source: spec.source,
            request: spec.request.unwrap_or_else(|| RequestSpec {
                method: default_method(),
                path: default_path(),
            }),
            response: spec.response,
            expect: spec.expect,
        });
    }
    tests
}

fn valid_integration_name(name: &str) -> bool {
    name == BASE
        || !name.is_empty()
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// serde_yaml_ng appends " at line X column Y"; we print the line in front instead.
fn strip_location(msg: &str) -> &str {
    msg.find(" at line ").map_or(msg, |i| &msg[..i])
}

/// Line numbers of the items of the top-level `rules:` and `tests:` lists. The YAML parser
/// does not expose spans, so this reads the text: an item starts at a `- ` at the list's
/// indentation. Falls back to the section's line when the layout is unusual.
struct ItemLines {
    sections: HashMap<String, (usize, Vec<usize>)>,
}

impl ItemLines {
    fn scan(text: &str) -> ItemLines {
        let mut sections: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        let mut current: Option<String> = None;
        let mut item_indent: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = raw.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = raw.len() - trimmed.len();
            if indent == 0 && !trimmed.starts_with('-') {
                let key = trimmed.split(':').next().unwrap_or("").trim().to_string();
                sections.insert(key.clone(), (line_no, Vec::new()));
                current = Some(key);
                item_indent = None;
                continue;
            }
            let Some(section) = &current else { continue };
            if trimmed.starts_with("- ") || trimmed == "-" {
                let expected = *item_indent.get_or_insert(indent);
                if indent == expected {
                    if let Some(entry) = sections.get_mut(section) {
                        entry.1.push(line_no);
                    }
                }
            }
        }
        ItemLines { sections }
    }

    fn item(&self, section: &str, index: usize) -> usize {
        self.sections
            .get(section)
            .map(|(start, items)| items.get(index).copied().unwrap_or(*start))
            .unwrap_or(1)
    }

    fn rule(&self, index: usize) -> usize {
        self.item("rules", index)
    }

    fn test(&self, index: usize) -> usize {
        self.item("tests", index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"integration: slack
base_url: https://slack.com/api
rules:
  - name: token-expired
    match: { status: [200], content_type: json }
    expr: |
      body.ok = false and body.error = "token_expired"
        ? { "status": 401, "action": "refresh", "error": body.error }

  - name: revoked
    match: { status: [200, 4xx] }
    expr: 'body.error = "token_revoked" ? { "status": 401, "action": "reauth" }'
tests:
  - name: expired
    response: { status: 200, body: { ok: false, error: token_expired } }
    expect: { rule: token-expired, status: 401, action: refresh }
  - name: fine
    response: { status: 200, body: { ok: true } }
    expect: { unchanged: true }
"#;

    #[test]
    fn parses_rules_tests_and_their_lines() {
        let set = parse("slack.yaml", GOOD, Some("slack")).unwrap();
        assert_eq!(set.rules.len(), 2);
        assert_eq!((set.rules[0].line, set.rules[1].line), (4, 10));
        assert_eq!((set.tests[0].line, set.tests[1].line), (14, 17));
        assert_eq!(
            set.rules[1].matcher.statuses,
            vec![StatusPattern::Exact(200), StatusPattern::Class(4)]
        );
    }

    #[test]
    fn bad_jsonata_names_file_rule_and_line() {
        let text = GOOD.replace(r#"'body.error = "token_revoked" ?"#, r#"'body.error = = ?"#);
        let errs = parse("rules/slack.yaml", &text, Some("slack")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("rules/slack.yaml:10: rule `revoked`: JSONata"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let text = GOOD.replace(
            "    expect: { unchanged: true }",
            "    expect: { unchanged: true",
        );
        let errs = parse("rules/slack.yaml", &text, Some("slack")).unwrap_err();
        assert!(errs[0].starts_with("rules/slack.yaml:"), "{}", errs[0]);
        assert!(
            !errs[0].starts_with("rules/slack.yaml:1:"),
            "line should be past the header: {}",
            errs[0]
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let text = GOOD.replace(
            "    match: { status: [200], content_type: json }",
            "    match: { stats: [200] }",
        );
        let errs = parse("s.yaml", &text, Some("slack")).unwrap_err();
        assert!(
            errs[0].contains("rules[0].match") && errs[0].contains("stats"),
            "{}",
            errs[0]
        );
        assert!(errs[0].starts_with("s.yaml:5:"), "{}", errs[0]);
    }

    #[test]
    fn file_name_must_match_integration_and_rules_must_be_unique() {
        let errs = parse("github.yaml", GOOD, Some("github")).unwrap_err();
        assert!(errs[0].contains("must match the file name"), "{errs:?}");
        let text = GOOD.replace("name: revoked", "name: token-expired");
        let errs = parse("slack.yaml", &text, Some("slack")).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("slack.yaml:10") && e.contains("already exists")),
            "{errs:?}"
        );
    }

    #[test]
    fn tests_must_name_existing_rules_and_expect_something() {
        let text = GOOD.replace("rule: token-expired,", "rule: nope,");
        let errs = parse("slack.yaml", &text, Some("slack")).unwrap_err();
        assert!(
            errs[0].contains("slack.yaml:14") && errs[0].contains("unknown rule `nope`"),
            "{errs:?}"
        );
    }

    /// Found by tests/fuzz_props.rs: `c[1..]` sliced inside a multi-byte character.
    #[test]
    fn status_class_with_a_multibyte_first_char_is_an_error_not_a_panic() {
        for class in ["éx", "4é", "€"] {
            let text = GOOD.replace("status: [200, 4xx]", &format!("status: [200, '{class}']"));
            let errs = parse("slack.yaml", &text, Some("slack")).unwrap_err();
            assert!(
                errs[0].starts_with("slack.yaml:10: rule `revoked`: match:"),
                "{errs:?}"
            );
        }
    }

    /// Found by tests/fuzz_props.rs: at the end of a file without a final newline the YAML
    /// parser names the line after the last one.
    #[test]
    fn yaml_errors_at_end_of_file_name_a_line_of_the_file() {
        let errs = parse("fz.yaml", "#", Some("fz")).unwrap_err();
        assert!(errs[0].starts_with("fz.yaml:1: "), "{errs:?}");
        let text = "integration: fz\nbase_url: https://x.test\nrules: [";
        let errs = parse("fz.yaml", text, Some("fz")).unwrap_err();
        assert!(errs[0].starts_with("fz.yaml:3: "), "{errs:?}");
    }

    /// Found by tests/fuzz_props.rs: a file that is not UTF-8 was reported without a line.
    #[test]
    fn non_utf8_rule_file_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slack.yaml");
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("token_revoked").unwrap();
        bytes[at] = 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let errs = load_file(&path).unwrap_err();
        let want = format!("{}:12: not UTF-8 text (byte {at})", path.display());
        assert_eq!(errs, vec![want]);
    }

    #[test]
    fn yaml_lines_count_every_line_break_yaml_knows() {
        assert_eq!(yaml_lines(""), 1);
        assert_eq!(yaml_lines("a"), 1);
        assert_eq!(yaml_lines("a\n"), 2);
        assert_eq!(yaml_lines("a\r\nb\rc\u{85}d\u{2028}e\u{2029}f"), 6);
    }

    #[test]
    fn bad_match_values_are_rejected() {
        let text = GOOD.replace("status: [200, 4xx]", "status: [200, 7xx]");
        let errs = parse("slack.yaml", &text, Some("slack")).unwrap_err();
        assert!(errs[0].contains("7xx"), "{errs:?}");
    }
}
