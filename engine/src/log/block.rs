//! Compressed segments: the sealed-segment format written by bulk ingest.
//!
//! A compressed segment file starts with the 8-byte header [`HEADER`] (`LFZS`, then the
//! version as a `u32` LE). Its first four bytes read as a record length would be
//! 0x535A464C, far above [`MAX_PAYLOAD_BYTES`], so no segment of the plain format can start
//! like that: a reader tells the two formats apart by the first bytes alone.
//!
//! After the header come blocks, each framed like a plain record
//! (`[len: u32 LE][crc: u32 LE][payload]`, CRC-32C over the length and the payload), so damage
//! is located at the block's byte offset in the file. A block's payload is
//!
//! ```text
//! [records: u32 LE][raw_len: u32 LE][zstd frame of raw_len bytes]
//! ```
//!
//! and the decompressed bytes are the block's records, transposed: every record's length as a
//! LEB128 varint, then byte column 0 (the first byte of every record), column 1, and so on;
//! within a column the records come longest first (ties in record order), and a record
//! shorter than `j + 1` bytes has no byte in column `j`. The CRC covers the compressed bytes; a block
//! that passes it but does not decompress to exactly `records` records of `raw_len` bytes
//! is reported as corrupt too.

use std::io::Read;
use std::path::Path;

use super::segment::{io_err, ScanStop, Scanner};
use super::LogError;
use crate::durable::frame::{encode_into, MAX_PAYLOAD_BYTES};

/// The first bytes of a compressed segment file: magic, then the format version (1).
pub(crate) const HEADER: [u8; 8] = *b"LFZS\x01\0\0\0";

/// A block is closed once its raw records reach this many bytes.
pub(crate) const BLOCK_RAW_BYTES: usize = 256 << 10;

/// zstd level of bulk ingest: fast to write, and most of the gain of higher levels on
/// event records (see docs/log-format.md).
pub(crate) const ZSTD_LEVEL: i32 = 1;

/// Zero bytes a reader appends to a decompressed block, so that [`untranspose_run`] can load
/// whole words at the end of the last column.
const TILE_PAD: usize = 8;

/// Bytes of a block payload before its zstd frame.
const BLOCK_HEAD: usize = 8;

/// Whether `first` (a segment's first bytes) is a compressed segment's header.
pub(crate) fn is_compressed(first: &[u8]) -> bool {
    first.len() >= 4 && first[..4] == HEADER[..4]
}

/// Whether the segment file at `path` is compressed (reads its first bytes).
pub(crate) fn sniff(path: &Path) -> Result<bool, LogError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, "open segment for reading", e))?;
    let mut first = [0u8; 4];
    let mut got = 0;
    while got < first.len() {
        match f.read(&mut first[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path, "read segment", e)),
        }
    }
    Ok(is_compressed(&first[..got]))
}

/// Reads the compressed segment `path` (first record `base`, `records` records, `bytes`
/// long): calls `f(offset, payload)` for records `[from, stop)`. Blocks before `from` are
/// checksum-verified but not decompressed. With `whole`, every block is decoded and the
/// segment must hold exactly `records` records. Damage is [`LogError::Corrupt`] naming the
/// file and the byte offset of the bad block.
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan<F, E>(path: &Path, base: u64, records: u64, bytes: u64, from: u64, stop: u64, whole: bool, mut f: F) -> Result<u64, E>
where
    F: FnMut(u64, &[u8]) -> Result<(), E>,
    E: From<LogError>,
{
    let corrupt = |byte_offset: u64, detail: String| LogError::Corrupt { path: path.to_path_buf(), byte_offset, detail };
    let mut head = [0u8; HEADER.len()];
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, "open segment for reading", e))?;
    file.read_exact(&mut head).map_err(|e| io_err(path, "read segment header", e))?;
    if head != HEADER {
        return Err(corrupt(0, format!("unknown compressed segment header {head:02x?} (this build reads {HEADER:02x?})")).into());
    }
    let mut scanner = Scanner::open(path, HEADER.len() as u64, bytes)?;
    let mut cur = base;
    let mut visited = 0u64;
    let mut scratch = Scratch::default();
    let end = base + records;
    while whole || cur < stop {
        let (pos, payload) = match scanner.next_record() {
            Ok(Some(r)) => r,
            Ok(None) if cur == end => break,
            Ok(None) => {
                return Err(corrupt(scanner.position(), format!("segment ends after {} records, {records} expected", cur - base)).into())
            }
            Err(ScanStop::Bad { pos, detail }) => return Err(corrupt(pos, format!("bad block: {detail}")).into()),
            Err(ScanStop::Io(e)) => return Err(e.into()),
        };
        let n = block_records(payload).map_err(|d| corrupt(pos, d))?;
        if cur + n > end {
            return Err(corrupt(pos, format!("block of {n} records goes past the segment's {records} records")).into());
        }
        if cur + n <= from && !whole {
            cur += n;
            continue;
        }
        let mut at = cur;
        let res = decode_block(payload, &mut scratch, |r| {
            let o = at;
            at += 1;
            if o >= from && o < stop {
                visited += 1;
                return f(o, r);
            }
            Ok(())
        })
        .map_err(|d| corrupt(pos, d))?;
        res?;
        cur += n;
    }
    Ok(visited)
}

/// Records of one block being gathered.
#[derive(Default)]
pub(crate) struct BlockBuf {
    data: Vec<u8>,
    lens: Vec<u32>,
    /// Scratch for the transposed layout and the compressed frame.
    raw: Vec<u8>,
    sorted: Vec<u8>,
    groups: Groups,
    zbuf: Vec<u8>,
}

/// A zstd compression context, created at first use and reused for every block a worker
/// compresses (one per worker, whatever the number of partitions).
#[derive(Default)]
pub(crate) struct Zstd(Option<zstd::bulk::Compressor<'static>>);

impl BlockBuf {
    /// Adds one record (at most [`MAX_PAYLOAD_BYTES`]).
    #[cfg(test)]
    pub(crate) fn push(&mut self, payload: &[u8]) {
        self.data.extend_from_slice(payload);
        self.lens.push(payload.len() as u32);
    }

    /// Adds one record that `write` appends to the buffer (encoding in place, without a
    /// copy); an error leaves the buffer as it was.
    pub(crate) fn push_with<E>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let start = self.data.len();
        match write(&mut self.data) {
            Ok(()) => {
                self.lens.push((self.data.len() - start) as u32);
                Ok(())
            }
            Err(e) => {
                self.data.truncate(start);
                Err(e)
            }
        }
    }

    /// Drops the gathered records.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.lens.clear();
    }

    /// Records gathered.
    pub(crate) fn records(&self) -> u32 {
        self.lens.len() as u32
    }

    /// Payload bytes gathered.
    pub(crate) fn raw_len(&self) -> usize {
        self.data.len()
    }

    /// Compresses the gathered records into one framed block appended to `out`, and
    /// empties the buffer. Nothing is written for an empty buffer. An error (a block too
    /// large to frame, or zstd failing) says why.
    pub(crate) fn flush_into(&mut self, out: &mut Vec<u8>, zstd: &mut Zstd) -> Result<(), String> {
        if self.lens.is_empty() {
            return Ok(());
        }
        transpose(&self.data, &self.lens, &mut self.groups, &mut self.raw, &mut self.sorted);
        let raw_len = u32::try_from(self.raw.len()).map_err(|_| "block larger than 4 GiB".to_string())?;
        let z = match &mut zstd.0 {
            Some(z) => z,
            None => zstd.0.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?),
        };
        self.zbuf.clear();
        self.zbuf.reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        z.compress_to_buffer(&self.raw[..], &mut self.zbuf).map_err(|e| format!("zstd compression failed: {e}"))?;
        let mut payload = Vec::with_capacity(BLOCK_HEAD + self.zbuf.len());
        payload.extend_from_slice(&self.records().to_le_bytes());
        payload.extend_from_slice(&raw_len.to_le_bytes());
        payload.extend_from_slice(&self.zbuf);
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!("a compressed block of {} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte frame limit", payload.len()));
        }
        encode_into(out, &payload);
        self.data.clear();
        self.lens.clear();
        Ok(())
    }
}

/// The raw layout of a block: every record's length (LEB128 varints, in record order), then
/// byte column 0, column 1, ...: column `j` holds byte `j` of every record longer than `j`,
/// taking the records longest first (ties in record order), so that each column is a prefix
/// of that order. Records of one job have a few shapes, so a column holds like bytes (enum
/// tags, the high bytes of timestamps and ids): zstd compresses it far better than records
/// side by side, and decoding is a strided copy per run of equal-length records.
fn transpose(data: &[u8], lens: &[u32], groups: &mut Groups, raw: &mut Vec<u8>, sorted: &mut Vec<u8>) {
    raw.clear();
    raw.reserve(data.len() + lens.len() * 2);
    for &l in lens {
        put_varint(raw, u64::from(l));
    }
    // The records longest first, side by side, as runs of equal length: a column of a run
    // is then a gather at a fixed stride.
    groups.build(lens);
    sorted.clear();
    sorted.resize(data.len(), 0);
    let mut at = 0usize;
    for &l in lens {
        let l = l as usize;
        let to = groups.place(l);
        sorted[to..to + l].copy_from_slice(&data[at..at + l]);
        at += l;
    }
    for j in 0..groups.longest() {
        for r in groups.runs.iter().take_while(|r| r.len > j) {
            raw.extend(sorted[r.start + j..r.start + r.len * r.count].iter().step_by(r.len));
        }
    }
}

/// Lengths below this are looked up in a dense table when grouping; longer ones (at most a
/// few per block, since a block closes at [`BLOCK_RAW_BYTES`]) by a search of the runs.
const DENSE_LENS: usize = 4096;

/// A block's records grouped by length, longest first (ties in record order): the order of
/// the transposed layout, found in linear time.
#[derive(Default)]
pub(crate) struct Groups {
    /// `dense[len]`: the run of records of length `len` (`u32::MAX`: none), for `len <
    /// DENSE_LENS`.
    dense: Vec<u32>,
    runs: Vec<Run>,
}

/// The records of one length: `count` of them, side by side from `start` in the grouped
/// bytes; `next` is where the next one (in record order) goes.
#[derive(Clone, Copy)]
struct Run {
    len: usize,
    count: usize,
    start: usize,
    next: usize,
}

impl Groups {
    /// Groups records of the lengths `lens` (in record order).
    fn build(&mut self, lens: &[u32]) {
        for r in &self.runs {
            if r.len < DENSE_LENS {
                self.dense[r.len] = u32::MAX;
            }
        }
        self.runs.clear();
        if self.dense.len() < DENSE_LENS {
            self.dense.resize(DENSE_LENS, u32::MAX);
        }
        for &l in lens {
            let l = l as usize;
            match self.find(l) {
                Some(k) => self.runs[k].count += 1,
                None => {
                    if l < DENSE_LENS {
                        self.dense[l] = self.runs.len() as u32;
                    }
                    self.runs.push(Run { len: l, count: 1, start: 0, next: 0 });
                }
            }
        }
        self.runs.sort_unstable_by_key(|r| std::cmp::Reverse(r.len));
        let mut at = 0usize;
        for (k, r) in self.runs.iter_mut().enumerate() {
            r.start = at;
            r.next = at;
            at += r.len * r.count;
            if r.len < DENSE_LENS {
                self.dense[r.len] = k as u32;
            }
        }
    }

    /// The run of records of length `l`.
    fn find(&self, l: usize) -> Option<usize> {
        if l < DENSE_LENS {
            let k = self.dense[l];
            (k != u32::MAX).then_some(k as usize)
        } else {
            self.runs.iter().position(|r| r.len == l)
        }
    }

    /// Where the next record (in record order) of length `l` starts in the grouped bytes.
    /// `l` must be one of the lengths the groups were built from, with records left.
    fn place(&mut self, l: usize) -> usize {
        let k = self.find(l).unwrap_or(0);
        let r = &mut self.runs[k];
        let at = r.next;
        r.next += l;
        at
    }

    /// The longest record's length (0 for no records).
    fn longest(&self) -> usize {
        self.runs.first().map_or(0, |r| r.len)
    }
}

/// Buffers (and a zstd context) reused across blocks by a reader.
#[derive(Default)]
pub(crate) struct Scratch {
    raw: Vec<u8>,
    data: Vec<u8>,
    lens: Vec<u32>,
    cols: Vec<usize>,
    groups: Groups,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

/// A block's record count, read from its payload (already checksum-verified) without
/// decompressing it.
pub(crate) fn block_records(payload: &[u8]) -> Result<u64, String> {
    if payload.len() < BLOCK_HEAD {
        return Err(format!("block payload of {} bytes is shorter than its {BLOCK_HEAD}-byte head", payload.len()));
    }
    Ok(u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as u64)
}

/// Decompresses a block payload and calls `f` with each record in order.
pub(crate) fn decode_block<E>(
    payload: &[u8],
    scratch: &mut Scratch,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Result<u64, E>, String> {
    let records = block_records(payload)?;
    let raw_len = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
    let Scratch { raw, data, lens, cols, groups, zstd } = scratch;
    raw.clear();
    raw.reserve(raw_len + TILE_PAD);
    let z = match zstd {
        Some(z) => z,
        None => zstd.insert(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?),
    };
    // Fails on a frame that decompresses to more than `raw_len` bytes.
    z.decompress_to_buffer(&payload[BLOCK_HEAD..], raw).map_err(|e| format!("block does not decompress: {e}"))?;
    if raw.len() != raw_len {
        return Err(format!("block decompresses to {} bytes, its head says {raw_len}", raw.len()));
    }
    lens.clear();
    let mut at = 0usize;
    let mut total = 0usize;
    for n in 0..records {
        let len = match raw.get(at) {
            Some(&b) if b < 0x80 => {
                at += 1;
                u64::from(b)
            }
            _ => {
                let (len, used) = get_varint(&raw[at..]).ok_or_else(|| format!("record {n} of the block has a bad length"))?;
                at += used;
                len
            }
        };
        let len =
            u32::try_from(len).ok().filter(|&l| l as usize <= MAX_PAYLOAD_BYTES).ok_or_else(|| format!("record {n} has length {len}"))?;
        total += len as usize;
        lens.push(len);
    }
    if raw.len() - at != total {
        return Err(format!("block holds {} record bytes, its lengths say {total}", raw.len() - at));
    }
    raw.extend_from_slice(&[0; TILE_PAD]);
    // Copy the columns back into runs of equal-length records, longest first.
    groups.build(lens);
    data.clear();
    data.resize(total, 0);
    // Where each column starts in `raw`: column `j` holds a byte of every record longer
    // than `j`.
    cols.clear();
    let mut src = at;
    let mut shortest = groups.runs.len();
    let mut longer: usize = groups.runs.iter().filter(|r| r.len > 0).map(|r| r.count).sum();
    for j in 0..groups.longest() {
        cols.push(src);
        src += longer;
        while shortest > 0 && groups.runs[shortest - 1].len <= j + 1 {
            shortest -= 1;
            if groups.runs[shortest].len == j + 1 {
                longer -= groups.runs[shortest].count;
            }
        }
    }
    // A run's bytes in a column come after those of the (longer) runs before it.
    let mut before = 0usize;
    for r in &groups.runs {
        untranspose_run(raw, &cols[..r.len], before, r.count, &mut data[r.start..r.start + r.len * r.count]);
        before += r.count;
    }
    for &l in lens.iter() {
        let l = l as usize;
        let o = groups.place(l);
        if let Err(e) = f(&data[o..o + l]) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(records))
}

/// Copies one run's columns back into its records: byte `j` of record `k` is
/// `raw[cols[j] + before + k]`, and goes to `out[k * len + j]` (`len = cols.len()`, `count`
/// records). It works in 8×8 tiles: eight words loaded from eight columns, transposed in
/// registers, stored as eight records' bytes. `raw` must extend at least 8 bytes past its
/// last column (a tile at a run's edge loads bytes it then drops).
fn untranspose_run(raw: &[u8], cols: &[usize], before: usize, count: usize, out: &mut [u8]) {
    let len = cols.len();
    for j0 in (0..len).step_by(8) {
        let jn = (len - j0).min(8);
        let mut starts = [0usize; 8];
        for (s, &c) in starts.iter_mut().zip(&cols[j0..j0 + jn]) {
            *s = c + before;
        }
        for k0 in (0..count).step_by(8) {
            let kn = (count - k0).min(8);
            let mut a = [0u64; 8];
            for (w, &s) in a.iter_mut().zip(&starts[..jn]) {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[s + k0..s + k0 + 8]);
                *w = u64::from_le_bytes(b);
            }
            transpose8(&mut a);
            if jn == 8 && kn == 8 {
                for (m, w) in a.iter().enumerate() {
                    let o = (k0 + m) * len + j0;
                    out[o..o + 8].copy_from_slice(&w.to_le_bytes());
                }
            } else {
                for (m, w) in a.iter().enumerate().take(kn) {
                    let o = (k0 + m) * len + j0;
                    out[o..o + jn].copy_from_slice(&w.to_le_bytes()[..jn]);
                }
            }
        }
    }
}

/// Transposes an 8×8 byte matrix held as eight little-endian words (row `i` is `a[i]`, its
/// byte `m` the element `(i, m)`): afterwards byte `i` of `a[m]` is the old element `(i, m)`.
#[inline(always)]
fn transpose8(a: &mut [u64; 8]) {
    #[inline(always)]
    fn swap<const SHIFT: u32, const MASK: u64>(a: &mut [u64; 8], i: usize, j: usize) {
        let t = ((a[i] >> SHIFT) ^ a[j]) & MASK;
        a[i] ^= t << SHIFT;
        a[j] ^= t;
    }
    const M32: u64 = 0x0000_0000_FFFF_FFFF;
    const M16: u64 = 0x0000_FFFF_0000_FFFF;
    const M8: u64 = 0x00FF_00FF_00FF_00FF;
    swap::<32, M32>(a, 0, 4);
    swap::<32, M32>(a, 1, 5);
    swap::<32, M32>(a, 2, 6);
    swap::<32, M32>(a, 3, 7);
    swap::<16, M16>(a, 0, 2);
    swap::<16, M16>(a, 1, 3);
    swap::<16, M16>(a, 4, 6);
    swap::<16, M16>(a, 5, 7);
    swap::<8, M8>(a, 0, 1);
    swap::<8, M8>(a, 2, 3);
    swap::<8, M8>(a, 4, 5);
    swap::<8, M8>(a, 6, 7);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::frame::{decode, Decoded, RECORD_HEADER_BYTES};
    use proptest::prelude::*;

    fn blocks(records: &[Vec<u8>], per_block: usize) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        let mut b = BlockBuf::default();
        let mut z = Zstd::default();
        for (i, r) in records.iter().enumerate() {
            b.push(r);
            if (i + 1) % per_block == 0 {
                b.flush_into(&mut out, &mut z).expect("flush");
            }
        }
        b.flush_into(&mut out, &mut z).expect("flush");
        out
    }

    fn read_all(file: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        assert!(is_compressed(file));
        let mut at = HEADER.len();
        let mut out = Vec::new();
        let mut raw = Scratch::default();
        while at < file.len() {
            match decode(&file[at..]) {
                Decoded::Record { len } => {
                    let payload = &file[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len];
                    decode_block(payload, &mut raw, |r| {
                        out.push(r.to_vec());
                        Ok::<(), ()>(())
                    })?
                    .expect("callback never fails");
                    at += RECORD_HEADER_BYTES + len;
                }
                other => return Err(format!("{other:?} at {at}")),
            }
        }
        Ok(out)
    }

    /// The documented raw layout, written out naively: the lengths, then column `j` of the
    /// records longer than `j`, longest first, ties in record order.
    fn documented_layout(records: &[Vec<u8>]) -> Vec<u8> {
        let mut raw = Vec::new();
        for r in records {
            put_varint(&mut raw, r.len() as u64);
        }
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(records[i].len()));
        for j in 0..records.iter().map(Vec::len).max().unwrap_or(0) {
            for &i in &order {
                if let Some(&b) = records[i].get(j) {
                    raw.push(b);
                }
            }
        }
        raw
    }

    /// Record lengths that mix short shapes with lengths on both sides of [`DENSE_LENS`].
    fn mixed_records() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let len = prop_oneof![4 => 0usize..40, 4 => prop::sample::select(vec![7usize, 8, 9, 16, 23, 24, 37]), 1 => (DENSE_LENS - 3)..(DENSE_LENS + 3), 1 => 5000usize..9000];
        proptest::collection::vec(len.prop_flat_map(|l| proptest::collection::vec(any::<u8>(), l)), 0..120)
    }

    proptest! {
        // Proves the segment codec round-trips any records (empty ones and long ones
        // included), in order, whatever the block boundaries.
        #[test]
        fn round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..200), per in 1usize..50) {
            let file = blocks(&records, per);
            prop_assert_eq!(read_all(&file).expect("decodes"), records);
        }

        // Proves a block's bytes are the documented layout (so logs written before and
        // after a change of the encoder read the same), and that records of long and
        // repeated lengths round-trip.
        #[test]
        fn layout_is_the_documented_one(records in mixed_records()) {
            let file = blocks(&records, usize::MAX);
            prop_assert_eq!(read_all(&file).expect("decodes"), records.clone());
            if records.is_empty() {
                prop_assert_eq!(file.len(), HEADER.len());
            } else {
                let payload = &file[HEADER.len() + RECORD_HEADER_BYTES..];
                let raw = zstd::bulk::decompress(&payload[BLOCK_HEAD..], 1 << 24).expect("zstd frame");
                prop_assert_eq!(raw, documented_layout(&records));
            }
        }

        // Proves any flipped byte after the header is detected (never decoded as records).
        #[test]
        fn flips_detected(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 1..40), at in any::<usize>(), bit in 0u8..8) {
            let mut file = blocks(&records, 7);
            let i = HEADER.len() + at % (file.len() - HEADER.len());
            file[i] ^= 1 << bit;
            prop_assert!(read_all(&file).is_err());
        }
    }

    // Not a test: times `decode_block` over the compressed segments of a log directory
    // (`LAMBDAFLOW_DECODE_DIR=DATA/log cargo test --release -p lambdaflow-engine --lib
    // decode_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn decode_speed() {
        let Some(dir) = std::env::var_os("LAMBDAFLOW_DECODE_DIR") else { return };
        let mut payloads = Vec::new();
        for p in std::fs::read_dir(&dir).expect("log dir") {
            let p = p.expect("entry").path();
            if !p.is_dir() {
                continue;
            }
            for s in std::fs::read_dir(&p).expect("partition dir") {
                let file = std::fs::read(s.expect("entry").path()).expect("segment");
                if !is_compressed(&file) {
                    continue;
                }
                let mut at = HEADER.len();
                while let Decoded::Record { len } = decode(&file[at..]) {
                    payloads.push(file[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len].to_vec());
                    at += RECORD_HEADER_BYTES + len;
                }
            }
        }
        let mut scratch = Scratch::default();
        for round in 0..3 {
            let t = std::time::Instant::now();
            let (mut records, mut bytes) = (0u64, 0u64);
            for p in &payloads {
                decode_block(p, &mut scratch, |r| {
                    records += 1;
                    bytes += r.len() as u64;
                    Ok::<(), ()>(())
                })
                .expect("decodes")
                .expect("never fails");
            }
            let s = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let mut z = zstd::bulk::Decompressor::new().expect("zstd");
            let mut raw = Vec::with_capacity(1 << 20);
            for p in &payloads {
                raw.clear();
                z.decompress_to_buffer(&p[BLOCK_HEAD..], &mut raw).expect("zstd frame");
            }
            let zs = t.elapsed().as_secs_f64();
            eprintln!(
                "round {round}: {records} records, {bytes} bytes in {s:.3} s: {:.1} ns/record (zstd alone {:.1} ns/record)",
                s * 1e9 / records as f64,
                zs * 1e9 / records as f64
            );
        }
    }

    // Proves the in-register tile transpose is a transpose.
    #[test]
    fn transpose8_transposes() {
        let mut a = [0u64; 8];
        for (i, w) in a.iter_mut().enumerate() {
            *w = u64::from_le_bytes(std::array::from_fn(|m| (i * 8 + m) as u8));
        }
        transpose8(&mut a);
        for (m, w) in a.iter().enumerate() {
            assert_eq!(w.to_le_bytes(), std::array::from_fn::<u8, 8, _>(|i| (i * 8 + m) as u8));
        }
    }

    // Proves a plain segment (a framed record first) is never taken for a compressed one.
    #[test]
    fn plain_segments_are_not_compressed() {
        let mut plain = Vec::new();
        encode_into(&mut plain, b"x");
        assert!(!is_compressed(&plain));
        assert!(u32::from_le_bytes([HEADER[0], HEADER[1], HEADER[2], HEADER[3]]) as usize > MAX_PAYLOAD_BYTES);
    }
}
