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
}
