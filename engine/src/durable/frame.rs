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
///
/// The four length bytes go through a table here rather than a second call into the
/// `crc32c` crate: a batch run checks every record, and the call's fixed cost (feature
/// dispatch, alignment prologue) was as large as the table's four lookups.
#[inline]
pub(crate) fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in len_bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc32c::crc32c_append(!crc, payload)
}

/// The byte-at-a-time table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
static CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
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

    // Proves the table-driven checksum is the CRC-32C of the length bytes followed by the
    // payload (the on-disk format), for lengths whose bytes cover every table index.
    #[test]
    fn record_crc_is_crc32c_of_length_then_payload() {
        let payload: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0u32, 1, 0x7f, 0x80, 0xff, 0x100, 0xabcd, 0x00ff_ff00, 0xdead_beef, u32::MAX] {
            for cut in [0, 1, 17, 300] {
                let len_bytes = len.to_le_bytes();
                let mut whole = len_bytes.to_vec();
                whole.extend_from_slice(&payload[..cut]);
                assert_eq!(record_crc(len_bytes, &payload[..cut]), crc32c::crc32c(&whole), "len {len:#x}, {cut} payload bytes");
            }
        }
        for b in 0..=255u8 {
            let len_bytes = [b, b.wrapping_mul(31), 0, b ^ 0x5a];
            let mut whole = len_bytes.to_vec();
            whole.extend_from_slice(b"x");
            assert_eq!(record_crc(len_bytes, b"x"), crc32c::crc32c(&whole), "length bytes {len_bytes:?}");
        }
    }

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
