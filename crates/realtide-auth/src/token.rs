//! Token text handling: cleaning (percent-decoding, whitespace removal), splitting into the
//! three compact-JWS parts, and decoding the header and claims into JSON objects.
//!
//! Nothing here checks a signature; see [`crate::verify`].

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use crate::error::AuthError;

/// base64url decoding that, like Elixir's `Base.url_decode64(_, padding: false)`, accepts input
/// with or without `=` padding.
pub(crate) const BASE64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A token split into its parts, with header and claims decoded but not yet trusted.
#[derive(Debug)]
pub(crate) struct ParsedToken<'a> {
    /// The decoded JOSE header.
    pub header: Map<String, Value>,
    /// The decoded claims (payload).
    pub claims: Map<String, Value>,
    /// `<header>.<payload>` exactly as received (after cleaning): the signed bytes.
    pub signing_input: &'a [u8],
    /// The base64url signature text (third part).
    pub signature: &'a [u8],
}

/// Percent-decodes the token and removes every ASCII whitespace byte (space, tab, newline,
/// vertical tab, form feed, carriage return), like the reference's
/// `Regex.replace(~r/\s|\n/, URI.decode(token), "")`. Invalid `%` sequences are kept as-is.
pub(crate) fn clean(token: &str) -> Vec<u8> {
    percent_decode_str(token)
        .filter(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
        .collect()
}

/// Splits a cleaned token into exactly three `.`-separated parts and decodes the claims and
/// the header (in that order, as the reference does) into JSON objects.
pub(crate) fn parse(cleaned: &[u8]) -> Result<ParsedToken<'_>, AuthError> {
    let mut parts = cleaned.split(|byte| *byte == b'.');
    let (Some(header_b64), Some(payload_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let claims = decode_object(payload_b64)?;
    let header = decode_object(header_b64)?;
    let signed_len = header_b64.len() + 1 + payload_b64.len();
    let signing_input = cleaned.get(..signed_len).ok_or(AuthError::Malformed)?;
    Ok(ParsedToken {
        header,
        claims,
        signing_input,
        signature,
    })
}

/// base64url-decodes one part and parses it as a JSON object.
fn decode_object(part: &[u8]) -> Result<Map<String, Value>, AuthError> {
    let json = BASE64URL_LENIENT
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice::<Value>(&json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::{clean, parse};
    use crate::error::AuthError;

    #[test]
    fn clean_decodes_percent_and_strips_whitespace() {
        assert_eq!(clean("a%2Eb .c\n\r\t"), b"a.b.c".to_vec());
        assert_eq!(clean("a%20b%0Ac"), b"abc".to_vec());
        assert_eq!(clean("100%zz"), b"100%zz".to_vec());
        assert_eq!(clean("a+b"), b"a+b".to_vec());
    }

    #[test]
    fn parse_rejects_wrong_part_counts() {
        for token in ["", "abc", "a.b", "a.b.c.d", "..", "...", "a.b.c"] {
            assert_eq!(
                parse(token.as_bytes()).map(|_| ()),
                Err(AuthError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn parse_accepts_padded_and_unpadded_parts() {
        // {"a":1} -> eyJhIjoxfQ (unpadded) / eyJhIjoxfQ== (padded)
        assert!(parse(b"eyJhIjoxfQ.eyJhIjoxfQ.sig").is_ok());
        assert!(parse(b"eyJhIjoxfQ==.eyJhIjoxfQ==.sig").is_ok());
    }

    #[test]
    fn parse_rejects_non_objects() {
        // "[]" -> W10 ; "1" -> MQ ; "{}" -> e30
        assert!(parse(b"W10.e30.sig").is_err());
        assert!(parse(b"e30.W10.sig").is_err());
        assert!(parse(b"e30.MQ.sig").is_err());
        assert!(parse(b"e30.e30.sig").is_ok());
    }
}
