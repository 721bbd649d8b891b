//! Lower-case hex, the one spelling of digests and ids the proxy writes (audit chain values,
//! trace ids, session and policy hashes).

/// Writes `bytes` as lower-case hex into `out`, two digits per byte, as far as `out` reaches.
pub fn fill(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        if let [high, low] = pair {
            *high = digit(b >> 4);
            *low = digit(b & 0x0f);
        }
    }
}

/// Appends `bytes` as lower-case hex to `out`.
pub fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    fill(out.get_mut(start..).unwrap_or_default(), bytes);
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
