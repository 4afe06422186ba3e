//! Docker json-file lines: `{"log":"hello\n","stream":"stdout","time":"2026-…Z"}`.
//!
//! Docker splits lines longer than 16 KiB; a `log` value without a trailing `\n` is a partial
//! fragment. Unknown keys (`attrs`) are ignored.

use std::borrow::Cow;

use serde::Deserialize;

use super::{Fragment, ParseError, parse_stream};

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

/// Parses one docker json-file line (without the `\n`; a trailing `\r` or spaces are tolerated).
pub fn parse(line: &[u8]) -> Result<Fragment<'_>, ParseError> {
    let raw: Raw<'_> = serde_json::from_slice(line).map_err(|_| ParseError::Json)?;
    let stream = parse_stream(raw.stream.as_bytes()).ok_or(ParseError::Stream)?;
    let timestamp = match raw.time {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    };
    let partial = !raw.log.ends_with('\n');
    // A final `log` loses its `\n` and one `\r` before it (CRLF written by the program).
    let strip = |s: &str| s.strip_suffix('\n').map_or(s.len(), |t| t.strip_suffix('\r').unwrap_or(t).len());
    let content = match raw.log {
        Cow::Borrowed(s) => Cow::Borrowed(&s.as_bytes()[..strip(s)]),
        Cow::Owned(mut s) => {
            s.truncate(strip(&s));
            Cow::Owned(s.into_bytes())
        }
    };
    Ok(Fragment { timestamp, stream, partial, content })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sluice_common::schema::Stream;

    use super::*;

    #[test]
    fn full_line() {
        let f = parse(br#"{"log":"hello \"x\"\n","stream":"stderr","time":"2026-11-27T00:17:09.669794202Z"}"#).unwrap();
        assert_eq!(&*f.content, br#"hello "x""#);
        assert_eq!(f.stream, Stream::Stderr);
        assert!(!f.partial);
        assert_eq!(&*f.timestamp, b"2026-11-27T00:17:09.669794202Z");
    }

    #[test]
    fn partial_and_empty_and_attrs() {
        let f = parse(br#"{"log":"abc","stream":"stdout","time":"2026-11-27T00:17:09Z"}"#).unwrap();
        assert!(f.partial);
        let f = parse(br#"{"log":"\n","stream":"stdout","time":"2026-11-27T00:17:09Z","attrs":{"a":"b"}}"#).unwrap();
        assert!(!f.partial);
        assert_eq!(&*f.content, b"");
        let f = parse(b"{\"log\":\"crlf\\r\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-27T00:17:09Z\"}\r").unwrap();
        assert_eq!(&*f.content, b"crlf");
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(parse(b"").unwrap_err(), ParseError::Json);
        assert_eq!(parse(b"{\"log\":\"x\"}").unwrap_err(), ParseError::Json);
        assert_eq!(parse(br#"{"log":"x","stream":"tty","time":"t"}"#).unwrap_err(), ParseError::Stream);
        assert_eq!(parse(b"{\"log\":\"\xff\",\"stream\":\"stdout\",\"time\":\"t\"}").unwrap_err(), ParseError::Json);
    }

    proptest! {
        #[test]
        fn any_text_round_trips(text in ".{0,200}", newline in any::<bool>()) {
            let log = if newline { format!("{text}\n") } else { text.clone() };
            let line = serde_json::json!({"log": log, "stream": "stdout", "time": "2026-11-27T00:17:09Z"}).to_string();
            let f = parse(line.as_bytes()).unwrap();
            prop_assert_eq!(f.partial, !newline);
            let want = if newline { text.strip_suffix('\r').unwrap_or(&text) } else { &text };
            prop_assert_eq!(&*f.content, want.as_bytes());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
