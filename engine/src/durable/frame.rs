//! Record framing (the log's segments and the key journal): `[len: u32 LE][crc: u32 LE][payload: len bytes]`, where `crc` is
//! CRC-32C over the four length bytes followed by the payload.

/// Bytes of framing in front of every payload (length + checksum).
pub const RECORD_HEADER_BYTES: usize = 8;

/// Largest payload a record may carry (16 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// Bytes a payload of `len` bytes occupies in a segment file, framing included.
pub(crate) fn framed_len(len: usize) -> u64 {
    (RECORD_HEADER_BYTES + len) as u64
}

/// Checksum of one record: CRC-32C over the little-endian length, then the payload.
pub(crate) fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends the framed form of `payload` to `buf`. The caller has checked the size limit.
pub(crate) fn encode_into(buf: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_BYTES);
    let len_bytes = (payload.len() as u32).to_le_bytes();
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&record_crc(len_bytes, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Outcome of decoding the record at the start of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole, checksum-valid record whose payload is `buf[8..8 + len]`.
    Record {
        /// Payload length.
        len: usize,
    },
    /// The slice ends before the record does; `total` is the framed size when the header is
    /// complete (else `None`).
    Incomplete {
        /// Framed size of the record, when known.
        total: Option<usize>,
    },
    /// The header or checksum is invalid.
    Bad(String),
}

/// Decodes the record at the start of `buf` without copying.
pub(crate) fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < RECORD_HEADER_BYTES {
        return Decoded::Incomplete { total: None };
    }
    let len_bytes = [buf[0], buf[1], buf[2], buf[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_PAYLOAD_BYTES {
        return Decoded::Bad(format!("length field {len} exceeds the {MAX_PAYLOAD_BYTES}-byte limit"));
    }
    let total = RECORD_HEADER_BYTES + len;
    if buf.len() < total {
        return Decoded::Incomplete { total: Some(total) };
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let actual = record_crc(len_bytes, &buf[RECORD_HEADER_BYTES..total]);
    if stored != actual {
        return Decoded::Bad(format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x}, length {len})"));
    }
    Decoded::Record { len }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves encode/decode round-trip, including the empty payload.
    #[test]
    fn round_trip() {
        for payload in [&b""[..], b"x", b"hello world"] {
            let mut buf = Vec::new();
            encode_into(&mut buf, payload);
            assert_eq!(buf.len() as u64, framed_len(payload.len()));
            assert_eq!(decode(&buf), Decoded::Record { len: payload.len() });
            assert_eq!(&buf[RECORD_HEADER_BYTES..], payload);
        }
    }

    // Proves a truncated record is Incomplete and any flipped byte is Bad (the CRC covers the
    // length field too), never a valid record.
    #[test]
    fn torn_and_flipped() {
        let mut buf = Vec::new();
        encode_into(&mut buf, b"payload bytes");
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Decoded::Incomplete { .. }));
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(!matches!(decode(&bad), Decoded::Record { .. }), "flip at byte {i} went undetected");
        }
    }

    // Proves an absurd length field is rejected as Bad rather than awaited as Incomplete.
    #[test]
    fn oversized_length() {
        let mut buf = vec![0u8; 16];
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&buf), Decoded::Bad(_)));
    }
}
