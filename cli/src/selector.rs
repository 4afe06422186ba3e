//! Kubernetes label selectors (`app=web,tier!=db`, `env in (a,b)`, `!canary`) parsed with the
//! apimachinery grammar and turned into Elasticsearch queries on `kubernetes.labels.*`.
//!
//! Hand-rolled: no maintained crate parses selectors without pulling in a Kubernetes client, and the
//! grammar is small. Semantics follow Kubernetes: `!=` and `notin` also match records without the
//! label. Keys are sanitised like the shipper does (`app.kubernetes.io/name` →
//! `app_kubernetes_io/name`), so selectors are written with the labels' real keys.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};
use sluice_common::schema::sanitize_label_key;

/// The document field holding pod labels (`flattened` / `flat_object` in the template).
pub const LABELS_FIELD: &str = "kubernetes.labels";

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector `{selector}`: {reason}")]
pub struct SelectorError {
    /// The whole selector.
    pub selector: String,
    /// What is wrong.
    pub reason: String,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key`: the label exists.
    Exists(String),
    /// `!key`: the label does not exist.
    NotExists(String),
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true without the label).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true without the label).
    NotIn(String, Vec<String>),
}

/// A parsed selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// The requirements, in the order written.
    pub requirements: Vec<Requirement>,
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| SelectorError { selector: s.to_owned(), reason };
        let mut requirements = Vec::new();
        for part in split_top_level(s).map_err(err)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement (stray comma?)".into()));
            }
            requirements.push(requirement(part).map_err(err)?);
        }
        Ok(LabelSelector { requirements })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl LabelSelector {
    /// The selector as Elasticsearch clauses: `(filter, must_not)` for a `bool` query.
    pub fn clauses(&self) -> (Vec<Value>, Vec<Value>) {
        let field = |k: &str| format!("{LABELS_FIELD}.{}", sanitize_label_key(k));
        let (mut filter, mut must_not) = (Vec::new(), Vec::new());
        for r in &self.requirements {
            match r {
                Requirement::Exists(k) => filter.push(json!({"exists": {"field": field(k)}})),
                Requirement::NotExists(k) => must_not.push(json!({"exists": {"field": field(k)}})),
                Requirement::Equals(k, v) => filter.push(json!({"term": {field(k): v}})),
                Requirement::NotEquals(k, v) => must_not.push(json!({"term": {field(k): v}})),
                Requirement::In(k, vs) => filter.push(json!({"terms": {field(k): vs}})),
                Requirement::NotIn(k, vs) => must_not.push(json!({"terms": {field(k): vs}})),
            }
        }
        (filter, must_not)
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                depth += 1;
                if depth > 1 {
                    return Err("nested parentheses".into());
                }
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("`)` without `(`".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("`(` without `)`".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        if key.contains(['=', '(', ' ']) {
            return Err(format!("`{part}`: `!` takes a key only (`!key`)"));
        }
        return Ok(Requirement::NotExists(check_key(key)?));
    }
    if let Some((key, rest)) = split_set_operator(part) {
        let (op, values) = rest;
        let values = values.trim();
        let inner = values
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("`{part}`: `{op}` needs a parenthesised list, e.g. `{key} {op} (a,b)`"))?;
        let list: Vec<String> = inner.split(',').map(|v| check_value(v.trim())).collect::<Result<_, _>>()?;
        if inner.trim().is_empty() {
            return Err(format!("`{part}`: the `{op}` list is empty"));
        }
        let key = check_key(key)?;
        return Ok(if op == "in" { Requirement::In(key, list) } else { Requirement::NotIn(key, list) });
    }
    for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, v) = (check_key(k.trim())?, check_value(v.trim())?);
            return Ok(if neg { Requirement::NotEquals(k, v) } else { Requirement::Equals(k, v) });
        }
    }
    if part.contains(['<', '>']) {
        return Err(format!("`{part}`: `<` and `>` are not supported on labels"));
    }
    Ok(Requirement::Exists(check_key(part)?))
}

/// `key in (…)` / `key notin (…)`: the key, the operator and the rest.
fn split_set_operator(part: &str) -> Option<(&str, (&'static str, &str))> {
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next()?;
    let rest = words.next()?.trim_start();
    for op in ["notin", "in"] {
        if let Some(values) = rest.strip_prefix(op)
            && values.trim_start().starts_with('(')
        {
            return Some((key, (op, values)));
        }
    }
    None
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label key: `[prefix/]name` (prefix a DNS subdomain, name ≤ 63 characters).
fn check_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| is_name(l) && !l.contains('_') && l.bytes().all(|c| !c.is_ascii_uppercase()))
    });
    if key.is_empty() {
        return Err("a requirement without a key".into());
    }
    if !prefix_ok || !is_name(name) {
        return Err(format!(
            "`{key}` is not a label key ([prefix/]name: name up to 63 of a-z, A-Z, 0-9, `-`, `_`, `.`, \
             starting and ending alphanumeric)"
        ));
    }
    Ok(key.to_owned())
}

/// A label value: empty, or a name of up to 63 characters.
fn check_value(v: &str) -> Result<String, String> {
    if v.is_empty() || is_name(v) {
        Ok(v.to_owned())
    } else {
        Err(format!("`{v}` is not a label value (up to 63 of a-z, A-Z, 0-9, `-`, `_`, `.`, alphanumeric at both ends)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<Requirement> {
        s.parse::<LabelSelector>().unwrap_or_else(|e| panic!("{e}")).requirements
    }

    #[test]
    fn parses_the_kubernetes_grammar() {
        use Requirement::*;
        assert_eq!(
            parse("app=web,tier!=db, env in (a, b),track notin (canary),release,!legacy,x==y"),
            vec![
                Equals("app".into(), "web".into()),
                NotEquals("tier".into(), "db".into()),
                In("env".into(), vec!["a".into(), "b".into()]),
                NotIn("track".into(), vec!["canary".into()]),
                Exists("release".into()),
                NotExists("legacy".into()),
                Equals("x".into(), "y".into()),
            ]
        );
        assert_eq!(
            parse("app.kubernetes.io/name=shop,empty="),
            vec![Equals("app.kubernetes.io/name".into(), "shop".into()), Equals("empty".into(), "".into())]
        );
        assert_eq!(parse("in in (in)"), vec![In("in".into(), vec!["in".into()])]);
        let s: LabelSelector = "a=b,c notin (d,e),!f".parse().unwrap();
        assert_eq!(s.to_string(), "a=b,c notin (d,e),!f");
    }

    #[test]
    fn rejects_bad_selectors_with_a_reason() {
        for (bad, why) in [
            ("app=web,", "empty requirement"),
            ("env in (a,b", "without `)`"),
            ("env in ()", "empty"),
            ("env in a,b", "not a label key"),
            ("-app=web", "not a label key"),
            ("app=we b", "not a label value"),
            ("app=-x", "not a label value"),
            ("count>3", "not supported"),
            ("!app=web", "`!` takes a key only"),
            ("Example.COM/app=x", "not a label key"),
            ("a/b/c=x", "not a label key"),
        ] {
            let e = bad.parse::<LabelSelector>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn clauses_use_sanitised_keys_and_kubernetes_semantics() {
        let s: LabelSelector = "app.kubernetes.io/name=shop,tier!=db,env in (a,b),x notin (y),k,!n".parse().unwrap();
        let (filter, must_not) = s.clauses();
        assert_eq!(
            filter,
            vec![
                json!({"term": {"kubernetes.labels.app_kubernetes_io/name": "shop"}}),
                json!({"terms": {"kubernetes.labels.env": ["a", "b"]}}),
                json!({"exists": {"field": "kubernetes.labels.k"}}),
            ]
        );
        assert_eq!(
            must_not,
            vec![
                json!({"term": {"kubernetes.labels.tier": "db"}}),
                json!({"terms": {"kubernetes.labels.x": ["y"]}}),
                json!({"exists": {"field": "kubernetes.labels.n"}}),
            ]
        );
    }
}
