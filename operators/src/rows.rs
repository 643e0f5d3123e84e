//! How a batch version stores rows: the files of views and seeds.
//!
//! A file is one row count, a little-endian `u64`, followed by the rows. Batch format 2
//! encoded every row with bincode's fixed-width integers (a `u64` key is 8 bytes, an
//! aggregate lane of [`crate::Sums`] 16), which is bincode's own encoding of a `Vec` of
//! rows. Format 3 encodes each row with bincode's variable-length integers (small numbers
//! take 1 byte, a customer id of a million 5, a lane of cents 3 to 5) and marks the count
//! with [`VARINT_ROWS`], its top bit, which no real count reaches. A batch run of the shop
//! job at 10M events writes about 3x fewer bytes this way (136 → 42 MB), and the disk copy of the write is
//! most of its cost; reading decodes both formats, so versions written before stay
//! readable.
//!
//! The count stays a fixed-width prefix in both formats so that the store can join the
//! shards of a seed and check row counts without decoding a row.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The top bit of a file's row count: the rows are encoded with variable-length integers.
pub const VARINT_ROWS: u64 = 1 << 63;

/// The options of format 3's row encoding. bincode's defaults are variable-length integers,
/// little-endian and no size limit; trailing bytes are the caller's to check (rows are
/// decoded one by one from one buffer).
fn varint() -> impl Options + Copy {
    bincode::DefaultOptions::new().allow_trailing_bytes()
}

/// The options of format 2's rows: what `bincode::serialize` writes.
fn fixint() -> impl Options + Copy {
    bincode::DefaultOptions::new().with_fixint_encoding().allow_trailing_bytes()
}

/// The row count of a file's header (the `u64` it starts with), and whether its rows are
/// variable-length encoded.
pub fn header(first8: u64) -> (u64, bool) {
    (first8 & !VARINT_ROWS, first8 & VARINT_ROWS != 0)
}

/// Encodes `rows` as a file of the current format.
pub(crate) fn encode<'a, T: Serialize + 'a>(rows: impl ExactSizeIterator<Item = &'a T>) -> Result<Vec<u8>, bincode::Error> {
    let opts = varint();
    let mut out = Vec::with_capacity(8 + rows.len() * 8);
    out.extend_from_slice(&(rows.len() as u64 | VARINT_ROWS).to_le_bytes());
    for row in rows {
        opts.serialize_into(&mut out, row)?;
    }
    Ok(out)
}

/// Decodes a file of either format, calling `each(index, row)` for every row in order, and
/// checks that nothing follows the last row.
pub(crate) fn decode_each<T: DeserializeOwned>(bytes: &[u8], mut each: impl FnMut(u64, T)) -> Result<(), bincode::Error> {
    let Some(head) = bytes.get(..8) else {
        return Err(Box::new(bincode::ErrorKind::Custom(format!("{} bytes, shorter than the row count", bytes.len()))));
    };
    let (count, var) = header(u64::from_le_bytes(head.try_into().expect("8 bytes")));
    let mut reader = &bytes[8..];
    // Not `with_capacity(count)`: the count is not trusted before the rows are read.
    if var {
        let opts = varint();
        for i in 0..count {
            each(i, opts.deserialize_from(&mut reader)?);
        }
    } else {
        let opts = fixint();
        for i in 0..count {
            each(i, opts.deserialize_from(&mut reader)?);
        }
    }
    if !reader.is_empty() {
        return Err(Box::new(bincode::ErrorKind::Custom(format!("{} bytes follow the last of its {count} rows", reader.len()))));
    }
    Ok(())
}

/// How many rows a file of rows can hold: its count, but never more than its bytes after
/// the count (a row takes one byte at least), so that a damaged count cannot make a reader
/// reserve more than the file could hold. 0 for a file shorter than its count.
pub(crate) fn count_bound(bytes: &[u8]) -> u64 {
    match bytes.get(..8) {
        Some(head) => header(u64::from_le_bytes(head.try_into().expect("8 bytes"))).0.min((bytes.len() - 8) as u64),
        None => 0,
    }
}

/// Decodes a whole file of either format.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Vec<T>, bincode::Error> {
    let mut rows = Vec::new();
    decode_each(bytes, |_, row| rows.push(row))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sums;
    use proptest::prelude::*;

    type Row = ((i32, u64), Sums<3>);

    proptest! {
        // Proves both formats decode to the rows encoded, for any integers (lanes at the
        // extremes of i128 included), and that format 3 is the one written.
        #[test]
        fn both_formats_round_trip(rows in proptest::collection::vec(
            ((any::<i32>(), any::<u64>()), (any::<i128>(), any::<i64>(), any::<i128>())), 0..50))
        {
            let rows: Vec<Row> = rows.into_iter().map(|(k, (a, b, c))| (k, Sums([a, i128::from(b), c]))).collect();
            let new = encode(rows.iter()).unwrap();
            prop_assert_eq!(header(u64::from_le_bytes(new[..8].try_into().unwrap())), (rows.len() as u64, true));
            prop_assert_eq!(decode::<Row>(&new).unwrap(), rows.clone());
            let old = bincode::serialize(&rows).unwrap();
            prop_assert_eq!(decode::<Row>(&old).unwrap(), rows);
        }
    }

    #[test]
    fn count_bound_trusts_a_count_no_further_than_the_bytes() {
        let rows: Vec<(u64, i64)> = (0..10).map(|i| (i, -(i as i64))).collect();
        let bytes = encode(rows.iter()).expect("encode");
        assert_eq!(count_bound(&bytes), 10);
        // A damaged count (the marker bit kept) is bounded by the bytes after it.
        let mut damaged = bytes.clone();
        damaged[..8].copy_from_slice(&(u64::MAX >> 1 | VARINT_ROWS).to_le_bytes());
        assert_eq!(count_bound(&damaged), (bytes.len() - 8) as u64);
        assert_eq!(count_bound(&bytes[..5]), 0);
    }

    // Proves format 3 is smaller for the shop's typical rows, and that damage is an error,
    // never a silently different set of rows: a truncated file, trailing bytes, a count
    // larger than the rows.
    #[test]
    fn smaller_and_strict() {
        let rows: Vec<Row> = (0..1000u64).map(|i| ((20_400 + (i % 90) as i32, i * 997), Sums([i as i128 * 1299, 3, 1]))).collect();
        let new = encode(rows.iter()).unwrap();
        let old = bincode::serialize(&rows).unwrap();
        assert!(new.len() * 3 < old.len(), "format 3: {} bytes, format 2: {}", new.len(), old.len());
        assert!(decode::<Row>(&new[..new.len() - 1]).is_err(), "truncated");
        let mut longer = new.clone();
        longer.push(0);
        assert!(decode::<Row>(&longer).unwrap_err().to_string().contains("1 bytes follow the last of its 1000 rows"));
        let mut more = new.clone();
        more[..8].copy_from_slice(&(1001 | VARINT_ROWS).to_le_bytes());
        assert!(decode::<Row>(&more).is_err(), "a count above the rows");
        assert!(decode::<Row>(&new[..5]).unwrap_err().to_string().contains("shorter than the row count"));
    }
}
