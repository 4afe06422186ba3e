//! CRI log lines (containerd, CRI-O): `<RFC 3339 time> <stdout|stderr> <P|F> <content>`.
//!
//! The runtime splits lines longer than 16 KiB into `P` (partial) fragments ending with one `F`.
//! Content is taken byte for byte; an empty content may or may not keep the space after the tag.

use std::borrow::Cow;

use memchr::memchr;

use super::{Fragment, ParseError, parse_stream, timestamp};

/// Parses one CRI line (without the `\n`).
pub fn parse(line: &[u8]) -> Result<Fragment<'_>, ParseError> {
    let sp1 = memchr(b' ', line).ok_or(ParseError::MissingField)?;
    let ts = &line[..sp1];
    if !timestamp::is_valid(ts) {
        return Err(ParseError::Timestamp);
    }
    let rest = &line[sp1 + 1..];
    let sp2 = memchr(b' ', rest).ok_or(ParseError::MissingField)?;
    let stream = parse_stream(&rest[..sp2]).ok_or(ParseError::Stream)?;
    let rest = &rest[sp2 + 1..];
    let (tag, content) = match memchr(b' ', rest) {
        Some(sp3) => (&rest[..sp3], &rest[sp3 + 1..]),
        // `… stdout F` with an empty content and no trailing space.
        None => (rest, &rest[rest.len()..]),
    };
    let partial = match tag {
        b"F" => false,
        b"P" => true,
        // Old CRI-O wrote no tag at all: the content follows the stream directly.
        _ => return Err(ParseError::Tag),
    };
    Ok(Fragment { timestamp: Cow::Borrowed(ts), stream, partial, content: Cow::Borrowed(content) })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sluice_common::schema::Stream;

    use super::*;

    #[test]
    fn full_and_partial_lines() {
        let f = parse(b"2026-11-27T00:17:09.669794202Z stdout F hello world").unwrap();
        assert_eq!(&*f.timestamp, b"2026-11-27T00:17:09.669794202Z");
        assert_eq!(f.stream, Stream::Stdout);
        assert!(!f.partial);
        assert_eq!(&*f.content, b"hello world");
        let p = parse(b"2026-11-27T00:17:09+00:00 stderr P part ").unwrap();
        assert!(p.partial);
        assert_eq!(p.stream, Stream::Stderr);
        assert_eq!(&*p.content, b"part ");
    }

    #[test]
    fn empty_content_with_and_without_space() {
        assert_eq!(&*parse(b"2026-11-27T00:17:09Z stdout F ").unwrap().content, b"");
        assert_eq!(&*parse(b"2026-11-27T00:17:09Z stdout F").unwrap().content, b"");
    }

    #[test]
    fn content_keeps_spaces_cr_and_binary() {
        let f = parse(b"2026-11-27T00:17:09.1Z stdout F  a  b\r").unwrap();
        assert_eq!(&*f.content, b" a  b\r");
        let f = parse(b"2026-11-27T00:17:09.1Z stdout F \xff\x00\xfe").unwrap();
        assert_eq!(&*f.content, b"\xff\x00\xfe");
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(parse(b"").unwrap_err(), ParseError::MissingField);
        assert_eq!(parse(b"hello world").unwrap_err(), ParseError::Timestamp);
        assert_eq!(parse(b"2026-11-27T00:17:09Z").unwrap_err(), ParseError::MissingField);
        assert_eq!(parse(b"2026-11-27T00:17:09Z stdin F x").unwrap_err(), ParseError::Stream);
        assert_eq!(parse(b"2026-11-27T00:17:09Z stdout X x").unwrap_err(), ParseError::Tag);
        assert_eq!(parse(b"2026-11-27T00:17:09Z stdout").unwrap_err(), ParseError::MissingField);
    }

    proptest! {
        #[test]
        fn any_content_round_trips(content in proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..300),
                                   partial in any::<bool>(), err in any::<bool>()) {
            let stream = if err { "stderr" } else { "stdout" };
            let tag = if partial { "P" } else { "F" };
            let mut line = format!("2026-11-27T00:17:09.669794202Z {stream} {tag} ").into_bytes();
            line.extend_from_slice(&content);
            let f = parse(&line).unwrap();
            prop_assert_eq!(&*f.content, &content[..]);
            prop_assert_eq!(f.partial, partial);
            prop_assert_eq!(f.stream, if err { Stream::Stderr } else { Stream::Stdout });
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
