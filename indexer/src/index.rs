//! Target index names: `elasticsearch.index` patterns rendered from the record's `sluice.ts`
//! (and `sluice.ns`) headers, without parsing the document.
//!
//! The index comes from the record, never from the clock (see `shared/DESIGN.md`): a re-sent record
//! always targets the index holding its first copy, so `op_type=create` answers 409.

use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime};

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Year,
    Month,
    Day,
    Hour,
    Namespace,
}

/// A parsed `elasticsearch.index` pattern such as `sluice-logs-%Y.%m.%d` or
/// `logs-{namespace}-%Y.%m.%d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPattern {
    tokens: Vec<Token>,
}

/// Why a pattern or a timestamp cannot produce an index name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The pattern is malformed.
    #[error("{0}")]
    Pattern(String),
    /// `sluice.ts` is not an RFC 3339 timestamp.
    #[error("header sluice.ts `{0}` is not an RFC 3339 timestamp")]
    Timestamp(String),
}

/// Placeholder for a record without namespace in a `{namespace}` pattern.
pub const NO_NAMESPACE: &str = "no-namespace";

impl IndexPattern {
    /// Parses and checks a pattern: `%Y %m %d %H %%`, `{namespace}`, and lowercase literal text
    /// valid in an index name.
    pub fn parse(pattern: &str) -> Result<Self, IndexError> {
        let err = |m: &str| Err(IndexError::Pattern(format!("`{pattern}`: {m}")));
        if pattern.is_empty() {
            return err("must not be empty");
        }
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{namespace}") {
                push_literal(&mut tokens, &mut literal);
                tokens.push(Token::Namespace);
                rest = after;
                continue;
            }
            if c == '%' {
                let token = match rest.as_bytes().get(1) {
                    Some(b'Y') => Token::Year,
                    Some(b'm') => Token::Month,
                    Some(b'd') => Token::Day,
                    Some(b'H') => Token::Hour,
                    Some(b'%') => {
                        literal.push('%');
                        rest = &rest[2..];
                        continue;
                    }
                    _ => return err("only %Y, %m, %d, %H and %% are supported"),
                };
                push_literal(&mut tokens, &mut literal);
                tokens.push(token);
                rest = &rest[2..];
                continue;
            }
            if c.is_ascii_uppercase() || " \\/*?\"<>|,#:".contains(c) {
                return err(&format!("`{c}` is not allowed in an index name (lowercase, no \\/*?\"<>|,#: or space)"));
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
        push_literal(&mut tokens, &mut literal);
        if let Some(Token::Literal(first)) = tokens.first()
            && (first.starts_with(['-', '_', '+', '.']))
        {
            return err("must not start with -, _, + or .");
        }
        Ok(IndexPattern { tokens })
    }

    /// Whether the pattern contains `{namespace}`.
    pub fn uses_namespace(&self) -> bool {
        self.tokens.contains(&Token::Namespace)
    }

    /// Whether the pattern contains a date (retention only applies to dated indices).
    pub fn is_dated(&self) -> bool {
        self.tokens.iter().any(|t| matches!(t, Token::Year))
            && self.tokens.iter().any(|t| matches!(t, Token::Month))
            && self.tokens.iter().any(|t| matches!(t, Token::Day))
    }

    /// The `index_patterns` entry of the template: every placeholder becomes `*`.
    pub fn wildcard(&self) -> String {
        let mut out = String::new();
        for token in &self.tokens {
            match token {
                Token::Literal(text) => out.push_str(text),
                _ => out.push('*'),
            }
        }
        out
    }

    /// Appends the index name for a record with timestamp `ts` (`sluice.ts`) and namespace `ns`.
    pub fn render_into(&self, ts: &str, ns: &str, out: &mut String) -> Result<(), IndexError> {
        let (date, hour) = utc_date_hour(ts)?;
        for token in &self.tokens {
            match token {
                Token::Literal(text) => out.push_str(text),
                Token::Year => push_num(out, date.year().unsigned_abs(), 4),
                Token::Month => push_num(out, u8::from(date.month()).into(), 2),
                Token::Day => push_num(out, date.day().into(), 2),
                Token::Hour => push_num(out, hour.into(), 2),
                Token::Namespace => push_namespace(out, ns),
            }
        }
        Ok(())
    }

    /// The index name for `ts` and `ns` (allocating; see [`IndexPattern::render_into`]).
    pub fn render(&self, ts: &str, ns: &str) -> Result<String, IndexError> {
        let mut out = String::new();
        self.render_into(ts, ns, &mut out)?;
        Ok(out)
    }

    /// The date of an index created by this pattern, or `None` if the name does not match it
    /// exactly (retention never touches such indices).
    pub fn date_of(&self, index: &str) -> Option<Date> {
        let mut fields = Fields::default();
        if !match_tokens(&self.tokens, index.as_bytes(), &mut fields) {
            return None;
        }
        let month = Month::try_from(fields.month?).ok()?;
        Date::from_calendar_date(fields.year?, month, fields.day?).ok()
    }
}

fn push_literal(tokens: &mut Vec<Token>, literal: &mut String) {
    if !literal.is_empty() {
        tokens.push(Token::Literal(std::mem::take(literal)));
    }
}

fn push_num(out: &mut String, n: u32, width: usize) {
    use std::fmt::Write;
    let _ = write!(out, "{n:0width$}");
}

fn push_namespace(out: &mut String, ns: &str) {
    if ns.is_empty() {
        out.push_str(NO_NAMESPACE);
        return;
    }
    // Kubernetes namespaces are DNS labels already; anything else is made index-safe.
    for c in ns.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            _ => out.push('_'),
        }
    }
}

/// The UTC date and hour of an RFC 3339 timestamp. The contract's form (`…Z`) is read from fixed
/// positions; other offsets take the slow path through a full parse.
pub fn utc_date_hour(ts: &str) -> Result<(Date, u8), IndexError> {
    let b = ts.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b.get(range)?.iter().try_fold(0u32, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
    };
    let fast = (b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b't') && b[13] == b':')
        .then(|| b.last().copied())
        .flatten()
        .filter(|&last| last == b'Z' || last == b'z');
    if fast.is_some()
        && let (Some(y), Some(m), Some(d), Some(h)) = (digits(0..4), digits(5..7), digits(8..10), digits(11..13))
        && let Ok(month) = Month::try_from(m as u8)
        && let Ok(date) = Date::from_calendar_date(y as i32, month, d as u8)
        && h < 24
    {
        return Ok((date, h as u8));
    }
    let parsed = OffsetDateTime::parse(ts, &Rfc3339).map_err(|_| IndexError::Timestamp(ts.to_owned()))?;
    let utc = parsed.to_offset(time::UtcOffset::UTC);
    Ok((utc.date(), utc.hour()))
}

#[derive(Default, Clone, Copy)]
struct Fields {
    year: Option<i32>,
    month: Option<u8>,
    day: Option<u8>,
}

fn match_tokens(tokens: &[Token], input: &[u8], fields: &mut Fields) -> bool {
    let Some((token, rest)) = tokens.split_first() else { return input.is_empty() };
    let num = |len: usize| -> Option<u32> {
        input.get(..len)?.iter().try_fold(0u32, |acc, &d| d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0')))
    };
    match token {
        Token::Literal(text) => input.starts_with(text.as_bytes()) && match_tokens(rest, &input[text.len()..], fields),
        Token::Year => num(4).is_some_and(|y| {
            fields.year = Some(y as i32);
            match_tokens(rest, &input[4..], fields)
        }),
        Token::Month | Token::Day | Token::Hour => num(2).is_some_and(|v| {
            match token {
                Token::Month => fields.month = Some(v as u8),
                Token::Day => fields.day = Some(v as u8),
                _ => {}
            }
            match_tokens(rest, &input[2..], fields)
        }),
        Token::Namespace => {
            // A namespace is at least one index-safe character; try every length.
            let max = input.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_').count();
            (1..=max).any(|len| {
                let mut attempt = *fields;
                let ok = match_tokens(rest, &input[len..], &mut attempt);
                if ok {
                    *fields = attempt;
                }
                ok
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;

    #[test]
    fn renders_the_default_pattern_from_the_header() {
        let p = IndexPattern::parse("sluice-logs-%Y.%m.%d").unwrap();
        assert_eq!(p.render("2026-11-27T00:17:09.669794202Z", "default").unwrap(), "sluice-logs-2026.11.27");
        assert_eq!(p.render("2026-01-02T23:59:59Z", "").unwrap(), "sluice-logs-2026.01.02");
        assert_eq!(p.wildcard(), "sluice-logs-*.*.*");
        assert!(!p.uses_namespace());
        assert!(p.is_dated());
    }

    #[test]
    fn non_utc_offsets_are_converted_to_the_utc_date() {
        let p = IndexPattern::parse("l-%Y.%m.%d-%H").unwrap();
        assert_eq!(p.render("2026-11-27T01:30:00+02:00", "").unwrap(), "l-2026.11.26-23");
        assert_eq!(p.render("2026-12-31T23:30:00-01:00", "").unwrap(), "l-2027.01.01-00");
    }

    #[test]
    fn bad_timestamps_are_errors() {
        let p = IndexPattern::parse("l-%Y.%m.%d").unwrap();
        for ts in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-27"] {
            assert!(matches!(p.render(ts, ""), Err(IndexError::Timestamp(_))), "{ts}");
        }
    }

    #[test]
    fn namespace_routing() {
        let p = IndexPattern::parse("logs-{namespace}-%Y.%m.%d").unwrap();
        assert!(p.uses_namespace());
        assert_eq!(p.render("2026-11-27T00:00:00Z", "kube-system").unwrap(), "logs-kube-system-2026.11.27");
        assert_eq!(p.render("2026-11-27T00:00:00Z", "").unwrap(), "logs-no-namespace-2026.11.27");
        assert_eq!(p.render("2026-11-27T00:00:00Z", "Odd/Name").unwrap(), "logs-odd_name-2026.11.27");
        assert_eq!(p.wildcard(), "logs-*-*.*.*");
        assert_eq!(p.date_of("logs-kube-system-2026.11.27"), Some(date!(2026 - 11 - 27)));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        for bad in ["", "Logs-%Y", "logs-%Q", "logs/%Y", "_logs-%Y", "logs %Y", "logs-%"] {
            assert!(IndexPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(IndexPattern::parse("logs-100%%").is_ok());
    }

    #[test]
    fn dates_are_read_back_only_from_matching_names() {
        let p = IndexPattern::parse("sluice-logs-%Y.%m.%d").unwrap();
        assert_eq!(p.date_of("sluice-logs-2026.11.27"), Some(date!(2026 - 11 - 27)));
        assert_eq!(p.date_of("sluice-logs-2026.11.27-restored"), None);
        assert_eq!(p.date_of("other-2026.11.27"), None);
        assert_eq!(p.date_of("sluice-logs-2026.13.27"), None);
        assert_eq!(p.date_of("sluice-logs-26.11.27"), None);
    }
}
