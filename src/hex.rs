//! Lower-case hex, the one spelling of digests and ids the proxy writes (audit chain values,
//! trace ids, session and policy hashes).

/// Appends `bytes` as lower-case hex to `out`.
pub fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend(bytes.iter().flat_map(|b| [digit(b >> 4), digit(b & 0x0f)]));
}

/// `bytes` as lower-case hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push(&mut out, bytes);
    // Only ASCII digits and letters were written.
    String::from_utf8(out).unwrap_or_default()
}

/// The bytes `text` spells in hex (either case); `None` for an odd length or a non-hex digit.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let value = |d: u8| (d as char).to_digit(16).and_then(|v| u8::try_from(v).ok());
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(value(*hi)? << 4 | value(*lo)?),
            _ => None,
        })
        .collect()
}

fn digit(nibble: u8) -> u8 {
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'a' + nibble - 10
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_written_as_two_lower_case_digits_each() {
        assert_eq!(super::encode(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn hex_decodes_either_case_and_refuses_odd_lengths_and_other_digits() {
        assert_eq!(super::decode("000fA5ff"), Some(vec![0x00, 0x0f, 0xa5, 0xff]));
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
    }
}
