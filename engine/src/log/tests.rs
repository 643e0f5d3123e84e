//! Tests of the log: round trips, segment rolls, recovery, corruption, crash debris, and a
//! model-based property test. Run the `throughput` benchmark with
//! `cargo test --release -- --ignored --nocapture throughput`.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;

use super::*;

use crate::testing::TempDir;

/// The log directory of a test directory (not yet created: the log creates it).
trait LogDir {
    fn log_dir(&self) -> PathBuf;
}

impl LogDir for TempDir {
    fn log_dir(&self) -> PathBuf {
        self.join("log")
    }
}

fn cfg(partitions: u32, segment_bytes: u64) -> LogConfig {
    LogConfig { partitions, segment_bytes }
}

fn read_all(log: &Log, partition: u32) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.read(partition, 0, u64::MAX, |o, p| {
        out.push((o, p.to_vec()));
        Ok::<(), LogError>(())
    })
    .unwrap();
    out
}

fn payloads(log: &Log, partition: u32, from: u64, to: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut expect = from;
    let n = log
        .read(partition, from, to, |o, p| {
            assert_eq!(o, expect, "offsets are visited in order without gaps");
            expect += 1;
            out.push(p.to_vec());
            Ok::<(), LogError>(())
        })
        .unwrap();
    assert_eq!(n as usize, out.len());
    out
}

fn segment_files(dir: &Path, partition: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(segment::partition_dir(dir, partition))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn rec(partition: u32, i: u64) -> Vec<u8> {
    format!("p{partition}-record-{i:08}-payload").into_bytes()
}

// Proves Log is Send + Sync so the engine can share it through an Arc.
#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
}

// Proves the round trip: batches across partitions come back equal and in order after a
// reopen, and returned positions are contiguous per partition and in input order.
#[test]
fn round_trip() {
    let tmp = TempDir::new("roundtrip");
    let dir = tmp.log_dir();
    let mut model: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
    {
        let log = Log::open_or_create(&dir, cfg(3, 1 << 20)).unwrap();
        assert_eq!(log.partitions(), 3);
        for batch in 0..5u64 {
            let owned: Vec<(u32, Vec<u8>)> = (0..100u64)
                .map(|i| {
                    let p = ((i * 7 + batch) % 3) as u32;
                    (p, rec(p, batch * 1000 + i))
                })
                .collect();
            let records: Vec<(u32, &[u8])> = owned.iter().map(|(p, v)| (*p, v.as_slice())).collect();
            let positions = log.append(&records).unwrap();
            assert_eq!(positions.len(), records.len());
            for (pos, (p, v)) in positions.iter().zip(&owned) {
                assert_eq!(pos.partition, *p);
                assert_eq!(pos.offset, model[*p as usize].len() as u64, "contiguous");
                model[*p as usize].push(v.clone());
            }
        }
        assert_eq!(log.end_offsets(), model.iter().map(|m| m.len() as u64).collect::<Vec<_>>());
    }
    let log = Log::open(&dir).unwrap();
    for p in 0..3 {
        let got = read_all(&log, p);
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..model[p as usize].len() as u64).collect::<Vec<_>>());
        let data: Vec<Vec<u8>> = got.into_iter().map(|(_, v)| v).collect();
        assert_eq!(data, model[p as usize]);
    }
    // Sub-ranges and clamping of `to`.
    assert_eq!(payloads(&log, 1, 10, 20), model[1][10..20].to_vec());
    assert_eq!(payloads(&log, 1, 150, u64::MAX), model[1][150..].to_vec());
    assert_eq!(log.read(1, 5000, 6000, |_, _| Ok::<(), LogError>(())).unwrap(), 0);
    let report = log.verify().unwrap();
    assert_eq!(report.records, log.end_offsets());
    assert_eq!(report.bytes, log.disk_bytes());
    // Empty batch and empty payloads are fine.
    assert!(log.append(&[]).unwrap().is_empty());
    let pos = log.append(&[(2, &b""[..])]).unwrap();
    assert_eq!(payloads(&log, 2, pos[0].offset, pos[0].offset + 1), vec![Vec::<u8>::new()]);
}

// Proves segment rolling: a small segment_bytes yields several segment files, the manifest
// lists the sealed ones with exact sizes, and reads cross segment boundaries, including
// reads starting in the middle of a later segment, before and after a reopen.
#[test]
fn segment_roll() {
    let tmp = TempDir::new("roll");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let seg_bytes = framed * 10; // exactly 10 records per segment
    let all: Vec<Vec<u8>> = (0..95).map(|i| rec(0, i)).collect();
    {
        let log = Log::open_or_create(&dir, cfg(2, seg_bytes)).unwrap();
        for chunk in all.chunks(13) {
            let batch: Vec<(u32, &[u8])> = chunk.iter().map(|v| (0, v.as_slice())).collect();
            log.append(&batch).unwrap();
        }
        assert_eq!(payloads(&log, 0, 0, 95), all);
    }
    let files = segment_files(&dir, 0);
    assert_eq!(files.len(), 10, "9 sealed + 1 active: {files:?}");
    assert!(files[3].ends_with("p0000/00000000000000000030.seg"));
    let m = Manifest::load(&dir).unwrap().unwrap();
    assert_eq!(m.sealed[0].len(), 9);
    for (i, s) in m.sealed[0].iter().enumerate() {
        assert_eq!(s.base_offset, i as u64 * 10);
        assert_eq!(s.records, 10);
        assert_eq!(s.bytes, seg_bytes);
        assert_eq!(fs::metadata(&files[i]).unwrap().len(), seg_bytes);
    }
    assert!(m.sealed[1].is_empty());

    let log = Log::open(&dir).unwrap();
    assert_eq!(log.end_offsets(), vec![95, 0]);
    assert_eq!(payloads(&log, 0, 0, 95), all);
    assert_eq!(payloads(&log, 0, 47, 95), all[47..].to_vec(), "middle of a later segment");
    assert_eq!(payloads(&log, 0, 9, 11), all[9..11].to_vec(), "across a boundary");
    assert_eq!(payloads(&log, 0, 90, 200), all[90..].to_vec(), "active segment");

    // A record larger than segment_bytes goes into a segment of its own.
    let big = vec![7u8; seg_bytes as usize * 2];
    let pos = log.append(&[(0, &big), (0, b"after")]).unwrap();
    assert_eq!(pos[0].offset, 95);
    assert_eq!(pos[1].offset, 96);
    assert_eq!(payloads(&log, 0, 95, 97), vec![big.clone(), b"after".to_vec()]);
    drop(log);
    let log = Log::open(&dir).unwrap();
    assert_eq!(payloads(&log, 0, 94, 97)[1], big);
    let m = Manifest::load(&dir).unwrap().unwrap();
    let last = m.sealed[0].last().unwrap();
    assert_eq!((last.base_offset, last.records), (95, 1));
    assert_eq!(log.verify().unwrap().records, vec![97, 0]);
}

// Proves the sparse index: reads starting at arbitrary offsets inside a segment holding
// many index strides return exactly the right records, both in the active segment (index
// built by appends and recovery) and in a sealed one (index learned lazily by a scan).
#[test]
fn sparse_index_reads() {
    let tmp = TempDir::new("index");
    let dir = tmp.log_dir();
    let n = INDEX_STRIDE * 3 + 17;
    let all: Vec<Vec<u8>> = (0..n).map(|i| rec(0, i)).collect();
    let seg_bytes = framed_len(all[0].len()) * (INDEX_STRIDE * 2 + 5);
    let log = Log::open_or_create(&dir, cfg(1, seg_bytes)).unwrap();
    let batch: Vec<(u32, &[u8])> = all.iter().map(|v| (0, v.as_slice())).collect();
    log.append(&batch).unwrap();
    for _ in 0..2 {
        for from in
            [0, 1, INDEX_STRIDE - 1, INDEX_STRIDE, INDEX_STRIDE + 1, 2 * INDEX_STRIDE + 4, 2 * INDEX_STRIDE + 5, 3 * INDEX_STRIDE, n - 1]
        {
            assert_eq!(payloads(&log, 0, from, from + 3), all[from as usize..][..3.min((n - from) as usize)].to_vec());
        }
    }
    drop(log);
    let log = Log::open(&dir).unwrap();
    assert_eq!(payloads(&log, 0, INDEX_STRIDE + 1, INDEX_STRIDE + 2)[0], all[INDEX_STRIDE as usize + 1]);
    assert_eq!(payloads(&log, 0, 3 * INDEX_STRIDE + 1, n), all[3 * INDEX_STRIDE as usize + 1..].to_vec());
}

// Proves torn-tail recovery: garbage appended to the active segment, or its last record cut
// in half, is truncated on reopen back to the last whole record; later appends get the
// right offsets and everything reads back.
#[test]
fn torn_tail() {
    for mode in ["garbage", "half_record", "bad_crc_last"] {
        let tmp = TempDir::new("torn");
        let dir = tmp.log_dir();
        let all: Vec<Vec<u8>> = (0..25).map(|i| rec(1, i)).collect();
        let seg_bytes = framed_len(all[0].len()) * 10;
        {
            let log = Log::open_or_create(&dir, cfg(2, seg_bytes)).unwrap();
            let batch: Vec<(u32, &[u8])> = all.iter().map(|v| (1, v.as_slice())).collect();
            log.append(&batch).unwrap();
        }
        let active = segment_files(&dir, 1).pop().unwrap();
        assert!(active.ends_with("00000000000000000020.seg"));
        let len = fs::metadata(&active).unwrap().len();
        let framed = framed_len(all[0].len());
        let expect_end = match mode {
            "garbage" => {
                let mut f = OpenOptions::new().append(true).open(&active).unwrap();
                f.write_all(&[0xAB; 11]).unwrap();
                25
            }
            "half_record" => {
                let f = OpenOptions::new().write(true).open(&active).unwrap();
                f.set_len(len - framed / 2).unwrap();
                24
            }
            _ => {
                let mut bytes = fs::read(&active).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0xFF;
                fs::write(&active, bytes).unwrap();
                24
            }
        };
        let log = Log::open(&dir).unwrap();
        assert_eq!(log.end_offsets(), vec![0, expect_end], "mode {mode}");
        assert_eq!(fs::metadata(&active).unwrap().len(), (expect_end - 20) * framed, "file truncated to the last whole record ({mode})");
        assert_eq!(payloads(&log, 1, 0, 100), all[..expect_end as usize].to_vec());
        let pos = log.append(&[(1, b"next"), (1, b"next2")]).unwrap();
        assert_eq!(pos[0].offset, expect_end);
        assert_eq!(pos[1].offset, expect_end + 1);
        drop(log);
        let log = Log::open(&dir).unwrap();
        let got = payloads(&log, 1, 0, 100);
        assert_eq!(got.len() as u64, expect_end + 2);
        assert_eq!(got[expect_end as usize], b"next");
        log.verify().unwrap();
    }
}

// Proves a flipped byte in a sealed segment is detected lazily: open still succeeds (it
// only stats sealed segments), while read and verify return Corrupt naming that file and
// the byte offset of the bad record; reads not touching the bad record still work.
// A flipped byte in the *middle* of the active segment, with whole valid records after it, is
// not a torn tail: open refuses (naming the file, the bad record's offset and how to proceed)
// instead of truncating records that may have been acknowledged; nothing is modified.
#[test]
fn damage_inside_active_segment_is_refused_not_truncated() {
    let tmp = TempDir::new("midactive");
    let dir = tmp.log_dir();
    let all: Vec<Vec<u8>> = (0..10).map(|i| rec(0, i)).collect();
    {
        let log = Log::open_or_create(&dir, cfg(1, 1 << 20)).unwrap();
        let batch: Vec<(u32, &[u8])> = all.iter().map(|v| (0, v.as_slice())).collect();
        log.append(&batch).unwrap();
    }
    let active = segment_files(&dir, 0).pop().unwrap();
    let framed = framed_len(all[0].len());
    let mut bytes = fs::read(&active).unwrap();
    let bad_at = 3 * framed as usize;
    bytes[bad_at + 9] ^= 0x01; // a payload byte of record 3
    fs::write(&active, &bytes).unwrap();
    let err = Log::open(&dir).unwrap_err().to_string();
    assert!(err.contains(&format!("at byte {bad_at}")) && err.contains("valid records follow") && err.contains("truncate -s"), "{err}");
    assert_eq!(fs::read(&active).unwrap(), bytes, "nothing modified");
}

// A large random tail after the last good record must not make open search for valid
// records for minutes: the search has a budget, and past it open refuses (modifying
// nothing) with the remedy, or truncates if it finds the tail torn.
#[test]
fn large_random_tail_is_decided_quickly() {
    let tmp = TempDir::new("bigtail");
    let dir = tmp.log_dir();
    {
        let log = Log::open_or_create(&dir, cfg(1, 64 << 20)).unwrap();
        let recs: Vec<Vec<u8>> = (0..100).map(|i| rec(0, i)).collect();
        let batch: Vec<(u32, &[u8])> = recs.iter().map(|v| (0, v.as_slice())).collect();
        log.append(&batch).unwrap();
    }
    let active = segment_files(&dir, 0).pop().unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let garbage: Vec<u8> = (0..(8usize << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut f = OpenOptions::new().append(true).open(&active).unwrap();
    f.write_all(&garbage).unwrap();
    drop(f);
    let t = std::time::Instant::now();
    let outcome = Log::open(&dir);
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "open took {:?}", t.elapsed());
    match outcome {
        Ok(log) => assert_eq!(log.end_offsets(), vec![100]),
        Err(e) => assert!(e.to_string().contains("truncate -s"), "{e}"),
    }
}

#[test]
fn flipped_byte_in_sealed_segment() {
    let tmp = TempDir::new("flip");
    let dir = tmp.log_dir();
    let all: Vec<Vec<u8>> = (0..50).map(|i| rec(0, i)).collect();
    let framed = framed_len(all[0].len());
    {
        let log = Log::open_or_create(&dir, cfg(1, framed * 7)).unwrap();
        let batch: Vec<(u32, &[u8])> = all.iter().map(|v| (0, v.as_slice())).collect();
        log.append(&batch).unwrap();
    }
    // Second sealed segment holds offsets 7..14; corrupt the payload of offset 9.
    let victim = segment::segment_path(&dir, 0, 7);
    let mut bytes = fs::read(&victim).unwrap();
    let bad_record_at = 2 * framed;
    bytes[(bad_record_at + 8 + 5) as usize] ^= 0x20;
    fs::write(&victim, bytes).unwrap();

    let log = Log::open(&dir).expect("open does not scan sealed segments");
    let err = log.read(0, 0, 50, |_, _| Ok(())).unwrap_err();
    match &err {
        LogError::Corrupt { path, byte_offset, .. } => {
            assert_eq!(path, &victim);
            assert_eq!(*byte_offset, bad_record_at);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("corrupt record in sealed segment "), "{msg}");
    assert!(msg.contains(&victim.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("at byte {bad_record_at}")), "{msg}");

    // Records before the bad one are delivered, the bad one never is.
    let mut seen = Vec::new();
    let _ = log.read(0, 0, 50, |o, _| {
        seen.push(o);
        Ok::<(), LogError>(())
    });
    assert_eq!(seen, (0..9).collect::<Vec<_>>());
    // Other segments are unaffected.
    assert_eq!(payloads(&log, 0, 14, 50), all[14..].to_vec());
    assert_eq!(payloads(&log, 0, 0, 9), all[..9].to_vec());

    match log.verify().unwrap_err() {
        LogError::Corrupt { path, byte_offset, .. } => {
            assert_eq!(path, victim);
            assert_eq!(byte_offset, bad_record_at);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

// Proves sealed segments are checked at open: a missing one, a truncated one, and an
// unknown extra segment file each give a clear error naming the file.
#[test]
fn sealed_segment_checks_at_open() {
    let tmp = TempDir::new("sealedcheck");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    {
        let log = Log::open_or_create(&dir, cfg(1, framed * 5)).unwrap();
        let all: Vec<Vec<u8>> = (0..23).map(|i| rec(0, i)).collect();
        let batch: Vec<(u32, &[u8])> = all.iter().map(|v| (0, v.as_slice())).collect();
        log.append(&batch).unwrap();
    }
    // Unknown segment beyond the active one.
    let stray = segment::segment_path(&dir, 0, 999);
    fs::write(&stray, b"").unwrap();
    let err = Log::open(&dir).unwrap_err();
    assert!(matches!(err, LogError::SegmentInvalid { ref path, .. } if path == &stray), "{err}");
    assert!(err.to_string().contains("00000000000000000999.seg"), "{err}");
    fs::remove_file(&stray).unwrap();

    // Truncated sealed segment.
    let sealed = segment::segment_path(&dir, 0, 5);
    let f = OpenOptions::new().write(true).open(&sealed).unwrap();
    f.set_len(framed * 5 - 1).unwrap();
    let err = Log::open(&dir).unwrap_err();
    assert!(matches!(err, LogError::SegmentInvalid { ref path, .. } if path == &sealed), "{err}");
    assert!(err.to_string().contains("MANIFEST records"), "{err}");

    // Missing sealed segment.
    fs::remove_file(&sealed).unwrap();
    let err = Log::open(&dir).unwrap_err();
    assert!(matches!(err, LogError::SegmentInvalid { ref path, .. } if path == &sealed), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

// Proves manifest crash safety: a stale MANIFEST.tmp is ignored and removed; a garbled
// MANIFEST is a ManifestInvalid error naming its path; a missing MANIFEST next to partition
// directories is ManifestInvalid, and an absent log is NotFound naming the directory.
#[test]
fn manifest_crash_safety() {
    let tmp = TempDir::new("manifest");
    let dir = tmp.log_dir();
    let err = Log::open(&dir).unwrap_err();
    assert!(matches!(err, LogError::NotFound { ref path } if path == &dir), "{err}");
    {
        let log = Log::open_or_create(&dir, cfg(2, 1 << 20)).unwrap();
        log.append(&[(0, b"a"), (1, b"b")]).unwrap();
    }
    fs::write(dir.join("MANIFEST.tmp"), b"{\"half\": ").unwrap();
    let log = Log::open(&dir).unwrap();
    assert!(!dir.join("MANIFEST.tmp").exists());
    assert_eq!(log.end_offsets(), vec![1, 1]);
    drop(log);

    // cfg is ignored for an existing log.
    let log = Log::open_or_create(&dir, cfg(9, 10)).unwrap();
    assert_eq!(log.partitions(), 2);
    assert_eq!(log.segment_bytes(), 1 << 20);
    drop(log);

    let manifest = dir.join("MANIFEST");
    let good = fs::read(&manifest).unwrap();
    fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    let err = Log::open(&dir).unwrap_err();
    assert!(matches!(err, LogError::ManifestInvalid { ref path, .. } if path == &manifest), "{err}");
    assert!(err.to_string().contains(&manifest.display().to_string()), "{err}");
    // open_or_create must not paper over a garbled manifest either.
    assert!(matches!(Log::open_or_create(&dir, cfg(2, 1 << 20)), Err(LogError::ManifestInvalid { .. })));

    fs::remove_file(&manifest).unwrap();
    let err = Log::open_or_create(&dir, cfg(2, 1 << 20)).unwrap_err();
    assert!(matches!(err, LogError::ManifestInvalid { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

// Proves an invalid batch (a bad partition, or an oversized payload, anywhere in it) writes
// nothing at all: end offsets, disk bytes and file sizes are unchanged.
#[test]
fn invalid_batch_writes_nothing() {
    let tmp = TempDir::new("invalid");
    let dir = tmp.log_dir();
    let log = Log::open_or_create(&dir, cfg(2, 1 << 20)).unwrap();
    log.append(&[(0, b"x"), (1, b"y")]).unwrap();
    let before = (log.end_offsets(), log.disk_bytes());
    let err = log.append(&[(0, b"ok"), (1, b"ok"), (2, b"bad partition")]).unwrap_err();
    assert!(matches!(err, LogError::BadPartition { partition: 2, partitions: 2 }));
    let huge = vec![0u8; MAX_PAYLOAD_BYTES + 1];
    let err = log.append(&[(0, b"ok"), (1, &huge)]).unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { index: 1, .. }), "{err}");
    assert_eq!((log.end_offsets(), log.disk_bytes()), before);
    drop(log);
    let log = Log::open(&dir).unwrap();
    assert_eq!((log.end_offsets(), log.disk_bytes()), before);
    assert!(matches!(log.read(5, 0, 1, |_, _| Ok(())), Err(LogError::BadPartition { .. })));
    // A payload of exactly the limit is accepted.
    let max = vec![1u8; MAX_PAYLOAD_BYTES];
    assert_eq!(log.append(&[(1, &max)]).unwrap()[0].offset, 1);
    assert_eq!(payloads(&log, 1, 1, 2)[0].len(), MAX_PAYLOAD_BYTES);
}

// Proves an append that fails with an I/O error half-way (here: the next segment's path is
// blocked, so the roll fails after another partition was already written and a segment was
// sealed) is rolled back: nothing of the batch is stored, the manifest is restored, and the
// log keeps working.
#[test]
fn failed_append_is_rolled_back() {
    let tmp = TempDir::new("rollback");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let log = Log::open_or_create(&dir, cfg(2, framed * 4)).unwrap();
    let first: Vec<(u32, Vec<u8>)> = (0..3).flat_map(|i| [(0, rec(0, i)), (1, rec(1, i))]).collect();
    let batch: Vec<(u32, &[u8])> = first.iter().map(|(p, v)| (*p, v.as_slice())).collect();
    log.append(&batch).unwrap();
    let manifest_before = fs::read(dir.join("MANIFEST")).unwrap();
    let sizes_before: Vec<u64> = (0..2).flat_map(|p| segment_files(&dir, p)).map(|f| fs::metadata(f).unwrap().len()).collect();

    let blocker = segment::segment_path(&dir, 1, 4);
    fs::create_dir(&blocker).unwrap();
    let more: Vec<(u32, Vec<u8>)> = (3..6).flat_map(|i| [(0, rec(0, i)), (1, rec(1, i))]).collect();
    let batch2: Vec<(u32, &[u8])> = more.iter().map(|(p, v)| (*p, v.as_slice())).collect();
    let err = log.append(&batch2).unwrap_err();
    assert!(matches!(err, LogError::Io { ref path, .. } if path == &blocker), "{err}");
    assert!(err.to_string().contains("create segment"), "{err}");
    assert_eq!(log.end_offsets(), vec![3, 3]);
    assert_eq!(fs::read(dir.join("MANIFEST")).unwrap(), manifest_before);
    assert!(!segment::segment_path(&dir, 0, 4).exists(), "p0's new segment removed");
    fs::remove_dir(&blocker).unwrap();
    let sizes_after: Vec<u64> = (0..2).flat_map(|p| segment_files(&dir, p)).map(|f| fs::metadata(f).unwrap().len()).collect();
    assert_eq!(sizes_after, sizes_before);

    let pos = log.append(&batch2).unwrap();
    assert_eq!(pos[0], Position { partition: 0, offset: 3 });
    drop(log);
    let log = Log::open(&dir).unwrap();
    for p in 0..2u32 {
        let want: Vec<Vec<u8>> = (0..6).map(|i| rec(p, i)).collect();
        assert_eq!(payloads(&log, p, 0, 10), want);
    }
    log.verify().unwrap();
}

/// The callback's own error type, to prove `read` passes it through unchanged.
#[derive(Debug, PartialEq)]
enum Decode {
    Failed(u64),
    Log(String),
}

impl From<LogError> for Decode {
    fn from(e: LogError) -> Self {
        Decode::Log(e.to_string())
    }
}

// Proves an error returned by the read callback stops the scan and is propagated unchanged,
// in the callback's own type.
#[test]
fn callback_error_propagates() {
    let tmp = TempDir::new("callback");
    let log = Log::open_or_create(&tmp.log_dir(), cfg(1, 1 << 20)).unwrap();
    log.append(&[(0, b"a"), (0, b"b"), (0, b"c")]).unwrap();
    let mut calls = 0;
    let err = log
        .read(0, 0, 3, |o, _| {
            calls += 1;
            if o == 1 {
                Err(Decode::Failed(o))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(err, Decode::Failed(1));
    assert_eq!(calls, 2);
}

// Proves concurrent readers only ever see acknowledged, correct, in-order records while an
// appender (rolling segments) runs, through an Arc<Log>.
#[test]
fn concurrent_readers_and_appender() {
    let tmp = TempDir::new("concurrent");
    let log = Arc::new(Log::open_or_create(&tmp.log_dir(), cfg(2, 4096)).unwrap());
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for b in 0..40u64 {
                let owned: Vec<(u32, Vec<u8>)> = (0..50)
                    .map(|i| {
                        let n = b * 50 + i;
                        ((n % 2) as u32, rec((n % 2) as u32, n / 2))
                    })
                    .collect();
                let batch: Vec<(u32, &[u8])> = owned.iter().map(|(p, v)| (*p, v.as_slice())).collect();
                log.append(&batch).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..2u32)
        .map(|p| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut last = 0;
                while last < 1000 {
                    let end = log.end_offsets()[p as usize];
                    assert!(end >= last);
                    let got = payloads(&log, p, 0, end);
                    assert_eq!(got.len() as u64, end);
                    for (i, v) in got.iter().enumerate() {
                        assert_eq!(v, &rec(p, i as u64));
                    }
                    last = end;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(log.verify().unwrap().records, vec![1000, 1000]);
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<(u32, Vec<u8>)>),
    Reopen,
    /// Close, append garbage (a torn write) to a partition's active segment, reopen.
    TearAndReopen(u32, Vec<u8>),
    Read {
        partition: u32,
        from: u64,
        len: u64,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(
            (0u32..4, prop::collection::vec(any::<u8>(), 0..48)),
            0..24
        )
        .prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => (0u32..4, prop::collection::vec(any::<u8>(), 1..20))
            .prop_map(|(p, g)| Op::TearAndReopen(p, g)),
        2 => (0u32..4, 0u64..80, 0u64..40)
            .prop_map(|(partition, from, len)| Op::Read { partition, from, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    // Proves, against a Vec model, that random batches of random payloads on random
    // partitions, with a random small segment size, random reopen points and random torn
    // writes at the tail, always read back exactly as appended (full and partial ranges),
    // with matching end offsets.
    #[test]
    fn matches_vec_model(
        partitions in 1u32..4,
        segment_bytes in 1u64..300,
        ops in prop::collection::vec(op_strategy(), 1..25),
    ) {
        let tmp = TempDir::new("prop");
        let dir = tmp.log_dir();
        let mut log = Log::open_or_create(&dir, cfg(partitions, segment_bytes)).unwrap();
        let mut model: Vec<Vec<Vec<u8>>> = vec![Vec::new(); partitions as usize];
        for op in ops {
            match op {
                Op::Append(batch) => {
                    let batch: Vec<(u32, Vec<u8>)> =
                        batch.into_iter().map(|(p, v)| (p % partitions, v)).collect();
                    let refs: Vec<(u32, &[u8])> =
                        batch.iter().map(|(p, v)| (*p, v.as_slice())).collect();
                    let pos = log.append(&refs).unwrap();
                    for (pos, (p, v)) in pos.iter().zip(batch) {
                        let m = &mut model[p as usize];
                        prop_assert_eq!(*pos, Position { partition: p, offset: m.len() as u64 });
                        m.push(v);
                    }
                }
                Op::Reopen => {
                    drop(log);
                    log = Log::open(&dir).unwrap();
                }
                Op::TearAndReopen(p, garbage) => {
                    drop(log);
                    if let Some(active) = segment_files(&dir, p % partitions).pop() {
                        let mut f = OpenOptions::new().append(true).open(active).unwrap();
                        f.write_all(&garbage).unwrap();
                    }
                    log = Log::open(&dir).unwrap();
                }
                Op::Read { partition, from, len } => {
                    let p = partition % partitions;
                    let m = &model[p as usize];
                    let lo = (from as usize).min(m.len());
                    let hi = ((from + len) as usize).min(m.len());
                    prop_assert_eq!(payloads(&log, p, from, from + len), m[lo..hi].to_vec());
                }
            }
            let ends: Vec<u64> = model.iter().map(|m| m.len() as u64).collect();
            prop_assert_eq!(log.end_offsets(), ends);
        }
        drop(log);
        let log = Log::open(&dir).unwrap();
        for p in 0..partitions {
            prop_assert_eq!(payloads(&log, p, 0, u64::MAX), model[p as usize].clone());
        }
        let report = log.verify().unwrap();
        prop_assert_eq!(report.records, log.end_offsets());
        prop_assert_eq!(report.bytes, log.disk_bytes());
    }
}

// ----- rollback_to -----------------------------------------------------------------------

type Model = Vec<Vec<Vec<u8>>>;

/// Appends one batch holding `counts[p]` new records for each partition p (interleaved, as a
/// multi-partition group append is), mirroring it in `model`.
fn group_append(log: &Log, model: &mut Model, counts: &[u64]) {
    let mut owned: Vec<(u32, Vec<u8>)> = Vec::new();
    let most = counts.iter().copied().max().unwrap_or(0);
    for i in 0..most {
        for (p, &n) in counts.iter().enumerate() {
            if i < n {
                let p = p as u32;
                owned.push((p, rec(p, model[p as usize].len() as u64 + i)));
            }
        }
    }
    let batch: Vec<(u32, &[u8])> = owned.iter().map(|(p, v)| (*p, v.as_slice())).collect();
    let pos = log.append(&batch).unwrap();
    for (pos, (p, v)) in pos.iter().zip(owned) {
        assert_eq!(pos.offset, model[p as usize].len() as u64);
        model[p as usize].push(v);
    }
}

fn truncated(model: &Model, ends: &[u64]) -> Model {
    model.iter().zip(ends).map(|(m, &e)| m[..(e as usize).min(m.len())].to_vec()).collect()
}

fn ends_of(model: &Model) -> Vec<u64> {
    model.iter().map(|m| m.len() as u64).collect()
}

/// The log holds exactly `model`; verify agrees; no rollback debris is left.
fn assert_state(log: &Log, model: &Model) {
    assert_eq!(log.end_offsets(), ends_of(model));
    for (p, m) in model.iter().enumerate() {
        assert_eq!(&payloads(log, p as u32, 0, u64::MAX), m, "partition {p}");
    }
    let report = log.verify().unwrap();
    assert_eq!(report.records, ends_of(model));
    assert_eq!(report.bytes, log.disk_bytes());
    assert!(!log.dir().join("ROLLBACK").exists() && !log.dir().join("ROLLBACK.tmp").exists());
}

/// Checks `model`, then that appends continue at the ends, and that a reopen sees the same.
fn assert_state_and_usable(log: Log, model: &mut Model) {
    assert_state(&log, model);
    let dir = log.dir().to_path_buf();
    let ones = vec![1; model.len()];
    group_append(&log, model, &ones);
    assert_state(&log, model);
    drop(log);
    let log = Log::open(&dir).unwrap();
    assert_state(&log, model);
}

/// Every segment file of every partition with its contents, and the manifest.
fn disk_image(dir: &Path, partitions: u32) -> (Vec<(PathBuf, Vec<u8>)>, Vec<u8>) {
    let files = (0..partitions).flat_map(|p| segment_files(dir, p)).map(|f| (f.clone(), fs::read(&f).unwrap())).collect();
    (files, fs::read(dir.join("MANIFEST")).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// Proves a rollback inside the active segments: the interrupted group append disappears
// from the partitions it touched, an untouched partition's file is unchanged, a target
// beyond a partition's end leaves it alone, and appends continue at the targets.
#[test]
fn rollback_inside_active_segment() {
    let tmp = TempDir::new("rb-active");
    let dir = tmp.log_dir();
    let log = Log::open_or_create(&dir, cfg(3, 1 << 20)).unwrap();
    let mut model: Model = vec![Vec::new(); 3];
    group_append(&log, &mut model, &[10, 8, 5]);
    let start = log.end_offsets();
    let p2_file = fs::read(segment::segment_path(&dir, 2, 0)).unwrap();
    group_append(&log, &mut model, &[3, 4, 0]);
    let log = log.rollback_to(&start).unwrap();
    let mut want = truncated(&model, &start);
    assert_eq!(fs::read(segment::segment_path(&dir, 2, 0)).unwrap(), p2_file);
    let framed = framed_len(rec(0, 0).len());
    assert_eq!(fs::metadata(segment::segment_path(&dir, 0, 0)).unwrap().len(), 10 * framed);
    assert_state(&log, &want);

    // Partial: p0 back to 7, p1 at its end, p2 far beyond its end.
    let log = log.rollback_to(&[7, 8, 1000]).unwrap();
    want = truncated(&want, &[7, 8, 1000]);
    assert_state_and_usable(log, &mut want);
}

// Proves a rollback across one and several segment rolls, to every target offset including
// each segment boundary: later segment files are deleted, the manifest lists exactly the
// segments before the target's, that segment becomes the active one truncated at the target
// (an empty file at a boundary), and appends continue into it.
#[test]
fn rollback_across_segment_rolls() {
    let framed = framed_len(rec(0, 0).len());
    for target in 0..=16u64 {
        let tmp = TempDir::new("rb-rolls");
        let dir = tmp.log_dir();
        let log = Log::open_or_create(&dir, cfg(2, framed * 4)).unwrap();
        let mut model: Model = vec![Vec::new(); 2];
        group_append(&log, &mut model, &[5, 2]);
        // The "interrupted" append: rolls p0 over segments 4 -> 8 -> 12.
        group_append(&log, &mut model, &[11, 1]);
        assert_eq!(segment_files(&dir, 0).len(), 4);
        let ends = [target, 2];
        let log = log.rollback_to(&ends).unwrap();
        let mut want = truncated(&model, &ends);
        let sealed = (target / 4).min(3);
        let active_base = sealed * 4;
        let m = Manifest::load(&dir).unwrap().unwrap();
        assert_eq!(m.sealed[0].len() as u64, sealed, "target {target}");
        assert!(m.sealed[0].iter().all(|s| s.records == 4 && s.bytes == 4 * framed));
        let files = segment_files(&dir, 0);
        let bases: Vec<u64> = files.iter().map(|f| parse_segment_name(&f.file_name().unwrap().to_string_lossy()).unwrap()).collect();
        assert_eq!(bases, (0..=sealed).map(|i| i * 4).collect::<Vec<_>>(), "target {target}");
        assert_eq!(fs::metadata(files.last().unwrap()).unwrap().len(), (target - active_base) * framed, "target {target}");
        assert_state(&log, &want);
        let ones = [1, 0];
        group_append(&log, &mut want, &ones);
        if target % 4 == 0 && target < 16 {
            // At a boundary the next record goes into the (emptied) segment named by the target.
            assert_eq!(fs::metadata(segment::segment_path(&dir, 0, target)).unwrap().len(), framed);
        }
        assert_state_and_usable(log, &mut want);
    }
}

// Proves the sparse index is used and correct for a target far into a large active segment,
// and that recovery (which has no index and scans) finds the same cut.
#[test]
fn rollback_far_into_a_large_segment() {
    for crash in [false, true] {
        let tmp = TempDir::new("rb-index");
        let dir = tmp.log_dir();
        let log = Log::open_or_create(&dir, cfg(1, 64 << 20)).unwrap();
        let mut model: Model = vec![Vec::new()];
        group_append(&log, &mut model, &[2 * INDEX_STRIDE + 100]);
        let target = INDEX_STRIDE + 7;
        let log = if crash {
            rollback::crash_after_step(Some(2)); // the intent is durable, nothing else done
            assert!(log.rollback_to(&[target]).is_err());
            rollback::crash_after_step(None);
            Log::open(&dir).unwrap()
        } else {
            log.rollback_to(&[target]).unwrap()
        };
        let mut want = truncated(&model, &[target]);
        assert_eq!(fs::metadata(segment::segment_path(&dir, 0, 0)).unwrap().len(), target * framed_len(rec(0, 0).len()));
        assert_state_and_usable(log, &mut want);
    }
}

// Proves a rollback that removes nothing (targets at or beyond the ends) changes nothing on
// disk, writes no intent, and returns a working log.
#[test]
fn rollback_noop() {
    let tmp = TempDir::new("rb-noop");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let log = Log::open_or_create(&dir, cfg(2, framed * 3)).unwrap();
    let mut model: Model = vec![Vec::new(); 2];
    group_append(&log, &mut model, &[7, 2]);
    let before = disk_image(&dir, 2);
    let ends = log.end_offsets();
    let log = log.rollback_to(&ends).unwrap();
    assert_eq!(disk_image(&dir, 2), before);
    let log = log.rollback_to(&[u64::MAX, 100]).unwrap();
    assert_eq!(disk_image(&dir, 2), before);
    assert_state_and_usable(log, &mut model);
}

// Proves ends of the wrong length are refused (RollbackInvalid) and nothing is changed.
#[test]
fn rollback_wrong_length_is_refused() {
    let tmp = TempDir::new("rb-len");
    let dir = tmp.log_dir();
    let log = Log::open_or_create(&dir, cfg(3, 1 << 20)).unwrap();
    let mut model: Model = vec![Vec::new(); 3];
    group_append(&log, &mut model, &[4, 4, 4]);
    let before = disk_image(&dir, 3);
    for bad in [&[1u64, 1][..], &[1, 1, 1, 1], &[]] {
        let log = Log::open(&dir).unwrap();
        let err = log.rollback_to(bad).unwrap_err();
        assert!(matches!(err, LogError::RollbackInvalid { ref path, .. } if path == &dir), "{err}");
        assert!(err.to_string().contains(&format!("{} end offsets given for a log of 3 partitions", bad.len())), "{err}");
    }
    drop(log);
    assert_eq!(disk_image(&dir, 3), before);
    let log = Log::open(&dir).unwrap();
    assert_state_and_usable(log, &mut model);
}

/// A log of 3 partitions with segments of 4 records: an acknowledged prefix, then an
/// "interrupted" group append rolling p0 over several segments and p1 over one; p2 untouched.
/// Returns the full model and the rollback targets.
fn crash_fixture(dir: &Path) -> (Log, Model, Vec<u64>) {
    let framed = framed_len(rec(0, 0).len());
    let log = Log::open_or_create(dir, cfg(3, framed * 4)).unwrap();
    let mut model: Model = vec![Vec::new(); 3];
    group_append(&log, &mut model, &[5, 3, 6]);
    let start = log.end_offsets();
    group_append(&log, &mut model, &[11, 2, 0]);
    (log, model, start)
}

// Proves crash safety: a crash after each step of rollback_to leaves a directory that opens
// either rolled back (the intent was durable: open completes the rollback) or untouched (it was
// not: a retried rollback_to then works); either way appends, reads, verify and reopen agree.
#[test]
fn rollback_interrupted_at_every_step_is_completed_on_open() {
    let mut completed_at = None;
    for k in 1..100 {
        let tmp = TempDir::new("rb-crash");
        let dir = tmp.log_dir();
        let (log, model, targets) = crash_fixture(&dir);
        let want = truncated(&model, &targets);
        rollback::crash_after_step(Some(k));
        let outcome = log.rollback_to(&targets);
        rollback::crash_after_step(None);
        let log = match outcome {
            Ok(log) => {
                completed_at = Some(k);
                assert_state(&log, &want);
                break;
            }
            Err(e) => {
                assert!(e.to_string().contains(&format!("simulated crash after rollback step {k}")), "{e}");
                // Step 1 leaves only ROLLBACK.tmp; the intent is durable from step 2 until the
                // last step (its removal), after which the rollback is complete.
                assert_eq!(dir.join("ROLLBACK").exists(), (2..11).contains(&k), "step {k}");
                assert_eq!(dir.join("ROLLBACK.tmp").exists(), k == 1, "step {k}");
                let log = Log::open(&dir).unwrap();
                if k == 1 {
                    assert_state(&log, &model);
                    let log = log.rollback_to(&targets).unwrap();
                    assert_state(&log, &want);
                    log
                } else {
                    assert_state(&log, &want);
                    log
                }
            }
        };
        let mut want = want;
        assert_state_and_usable(log, &mut want);
    }
    // intent tmp, intent, manifest, 2 + 1 deletions, 2 dir fsyncs, 2 truncations, intent removal.
    assert_eq!(completed_at, Some(12), "rollback_to has 11 steps");
}

// Proves recovery itself is crash-safe: a crash after any step of rollback_to, then another
// after any step of the recovery in open, still opens rolled back in the end.
#[test]
fn rollback_interrupted_twice_is_completed_on_open() {
    let tmp = TempDir::new("rb-crash2");
    let base = tmp.join("base");
    let (log, model, targets) = crash_fixture(&base);
    let want = truncated(&model, &targets);
    drop(log);
    for k in 2..=10 {
        let crashed = tmp.join(&format!("crashed-{k}"));
        copy_dir(&base, &crashed);
        let log = Log::open(&crashed).unwrap();
        rollback::crash_after_step(Some(k));
        assert!(log.rollback_to(&targets).is_err());
        rollback::crash_after_step(None);
        let mut j = 1;
        loop {
            let dir = tmp.join(&format!("crashed-{k}-{j}"));
            copy_dir(&crashed, &dir);
            rollback::crash_after_step(Some(j));
            let outcome = Log::open(&dir);
            rollback::crash_after_step(None);
            match outcome {
                Ok(log) => {
                    assert_state(&log, &want);
                    break;
                }
                Err(e) => {
                    assert!(e.to_string().contains("simulated crash"), "{e}");
                    let log = Log::open(&dir).unwrap();
                    assert_state(&log, &want);
                }
            }
            j += 1;
            assert!(j < 50, "recovery does not terminate");
        }
        assert!(j > 1, "recovery after a crash at step {k} has steps");
    }
}

// Proves a rollback whose target lies behind a damaged record is refused with Corrupt naming
// the file and byte before anything is changed (the damage is never truncated away silently).
#[test]
fn rollback_behind_damage_is_refused_unchanged() {
    let tmp = TempDir::new("rb-damage");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let log = Log::open_or_create(&dir, cfg(1, framed * 4)).unwrap();
    let mut model: Model = vec![Vec::new()];
    group_append(&log, &mut model, &[10]);
    drop(log);
    let victim = segment::segment_path(&dir, 0, 0);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[(framed + 9) as usize] ^= 0x01; // a payload byte of record 1
    fs::write(&victim, bytes).unwrap();
    let before = disk_image(&dir, 1);
    let log = Log::open(&dir).unwrap();
    let err = log.rollback_to(&[3]).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { ref path, byte_offset, .. } if path == &victim && byte_offset == framed), "{err}");
    assert_eq!(disk_image(&dir, 1), before);
    assert!(!dir.join("ROLLBACK").exists());
    assert_eq!(Log::open(&dir).unwrap().end_offsets(), vec![10]);
}

// Proves open handles rollback debris: a stale ROLLBACK.tmp is removed and the log left as
// it was; a garbled ROLLBACK, or one for another number of partitions, is refused naming it.
#[test]
fn rollback_intent_debris_at_open() {
    let tmp = TempDir::new("rb-debris");
    let dir = tmp.log_dir();
    let log = Log::open_or_create(&dir, cfg(2, 1 << 20)).unwrap();
    let mut model: Model = vec![Vec::new(); 2];
    group_append(&log, &mut model, &[3, 3]);
    drop(log);
    fs::write(dir.join("ROLLBACK.tmp"), b"{\"format_ver").unwrap();
    let log = Log::open(&dir).unwrap();
    assert!(!dir.join("ROLLBACK.tmp").exists());
    assert_state(&log, &model);
    drop(log);

    let intent = dir.join("ROLLBACK");
    for (text, needle) in [
        (&b"{\"format_version\": 1, \"en"[..], "not a valid rollback intent"),
        (b"{\"format_version\": 1, \"ends\": [1]}", "1 end offsets for a log of 2 partitions"),
        (b"{\"format_version\": 9, \"ends\": [1, 1]}", "unsupported format_version 9"),
    ] {
        fs::write(&intent, text).unwrap();
        let err = Log::open(&dir).unwrap_err();
        assert!(matches!(err, LogError::RollbackInvalid { ref path, .. } if path == &intent), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // A valid one is completed.
    fs::write(&intent, b"{\"format_version\": 1, \"ends\": [1, 3]}").unwrap();
    let log = Log::open(&dir).unwrap();
    let mut want = truncated(&model, &[1, 3]);
    assert_state_and_usable(log, &mut want);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    // Proves, against a Vec model, that rolling back random logs (random record sizes and
    // segment size, so targets land anywhere: active segment, sealed segments, boundaries) to
    // random targets, optionally crashing after a random step, always ends with exactly the
    // records before the targets, and that appends, reads, verify and reopen then agree.
    #[test]
    fn rollback_matches_vec_model(
        partitions in 1u32..4,
        segment_bytes in 1u64..200,
        batches in prop::collection::vec(
            prop::collection::vec((0u32..4, prop::collection::vec(any::<u8>(), 0..40)), 0..20),
            1..4,
        ),
        target_fracs in prop::collection::vec(0.0f64..1.2, 4),
        crash_step in 0usize..12,
    ) {
        let tmp = TempDir::new("rb-prop");
        let dir = tmp.log_dir();
        let log = Log::open_or_create(&dir, cfg(partitions, segment_bytes)).unwrap();
        let mut model: Model = vec![Vec::new(); partitions as usize];
        let append = |log: &Log, model: &mut Model, batch: &[(u32, Vec<u8>)]| {
            let refs: Vec<(u32, &[u8])> = batch.iter().map(|(p, v)| (p % partitions, v.as_slice())).collect();
            for (pos, (p, v)) in log.append(&refs).unwrap().iter().zip(&refs) {
                assert_eq!(pos.offset, model[*p as usize].len() as u64);
                model[*p as usize].push(v.to_vec());
            }
        };
        for batch in &batches {
            append(&log, &mut model, batch);
        }
        let targets: Vec<u64> =
            model.iter().zip(&target_fracs).map(|(m, f)| (m.len() as f64 * f).round() as u64).collect();
        let mut want = truncated(&model, &targets);
        rollback::crash_after_step((crash_step > 0).then_some(crash_step));
        let outcome = log.rollback_to(&targets);
        rollback::crash_after_step(None);
        let log = match outcome {
            Ok(log) => log,
            Err(e) => {
                prop_assert!(e.to_string().contains("simulated crash"), "{}", e);
                // Either the intent was not durable yet (nothing changed: the caller retries), or
                // the rollback is complete once the log is open.
                let log = Log::open(&dir).unwrap();
                if log.end_offsets() == ends_of(&want) {
                    log
                } else {
                    prop_assert_eq!(log.end_offsets(), ends_of(&model));
                    prop_assert_eq!(crash_step, 1);
                    log.rollback_to(&targets).unwrap()
                }
            }
        };
        assert_state(&log, &want);
        append(&log, &mut want, &batches[0]);
        assert_state(&log, &want);
        drop(log);
        let log = Log::open(&dir).unwrap();
        assert_state(&log, &want);
    }
}

// ----- followers ---------------------------------------------------------------------

/// Every file and directory under `dir` (relative path, contents; `None` for a directory).
fn tree_image(dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<Vec<u8>>)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.push((rel, None));
                walk(root, &path, out);
            } else {
                out.push((rel, Some(fs::read(&path).unwrap())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Every segment's (base, records, bytes, sparse index) of every partition.
fn seg_states(log: &Log) -> Vec<Vec<(u64, u64, u64, Vec<u64>)>> {
    log.read_state().iter().map(|ps| ps.segments.iter().map(|s| (s.base, s.records, s.bytes, s.index.clone())).collect()).collect()
}

/// The follower holds exactly the first `ends[p]` records of `model[p]`.
fn assert_follows(follower: &Log, model: &Model, ends: &[u64]) {
    assert_eq!(follower.end_offsets(), ends);
    for (p, m) in model.iter().enumerate() {
        assert_eq!(payloads(follower, p as u32, 0, u64::MAX), m[..ends[p] as usize].to_vec(), "partition {p}");
    }
}

/// After `verify` completes every sparse index, the follower's segments (and indexes) are
/// exactly the writer's.
fn assert_same_segments(writer: &Log, follower: &Log) {
    assert_eq!(follower.verify().unwrap(), writer.verify().unwrap());
    assert_eq!(seg_states(follower), seg_states(writer));
}

// Proves the basic contract: a follower opened on a writer's log (with several partitions and
// segments small enough to seal often) starts at the sealed ends, reads exactly the writer's
// records after follow_to(writer's ends), and ends up with the writer's very segments.
#[test]
fn follower_reads_what_the_writer_acknowledged() {
    let tmp = TempDir::new("follow");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let writer = Log::open_or_create(&dir, cfg(3, framed * 7)).unwrap();
    let early = Log::open_follower(&dir).unwrap();
    assert!(early.is_follower() && !writer.is_follower());
    assert_eq!((early.partitions(), early.segment_bytes()), (3, framed * 7));
    assert_eq!(early.end_offsets(), vec![0, 0, 0]);
    let mut model: Model = vec![Vec::new(); 3];
    for counts in [[5, 0, 9], [20, 1, 3], [1, 1, 30]] {
        group_append(&writer, &mut model, &counts);
    }
    let late = Log::open_follower(&dir).unwrap();
    assert_eq!(late.end_offsets(), vec![21, 0, 35], "the sealed ends (7 records per segment)");
    assert_follows(&late, &model, &[21, 0, 35]);
    for follower in [&early, &late] {
        follower.follow_to(&writer.end_offsets()).unwrap();
        assert_follows(follower, &model, &ends_of(&model));
        assert_eq!(payloads(follower, 2, 13, 16), model[2][13..16].to_vec(), "across a seal");
        assert_same_segments(&writer, follower);
        follower.follow_to(&[0, 0, 0]).unwrap();
        assert_eq!(follower.end_offsets(), ends_of(&model), "a lower end changes nothing");
    }
}

// Proves following in small steps: each step stops exactly at the given ends even though the
// files hold more, steps cross seals (and stop exactly on them), and the sparse index learned
// on the way (a segment of several index strides) equals the writer's.
#[test]
fn follow_in_steps() {
    let tmp = TempDir::new("follow-steps");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let per_seg = INDEX_STRIDE * 2 + 3;
    let writer = Log::open_or_create(&dir, cfg(2, framed * per_seg)).unwrap();
    let follower = Log::open_follower(&dir).unwrap();
    let mut model: Model = vec![Vec::new(); 2];
    group_append(&writer, &mut model, &[per_seg * 3 + 100, 40]);
    let all = ends_of(&model);
    let mut ends = vec![0, 0];
    for step in [1, 2, 1000, INDEX_STRIDE, 3, per_seg, 1, per_seg - 7, 5000, u64::MAX / 4] {
        ends = ends.iter().zip(&all).map(|(e, a)| (e + step).min(*a)).collect();
        follower.follow_to(&ends).unwrap();
        assert_eq!(follower.end_offsets(), ends);
        for p in 0..2 {
            let e = ends[p as usize];
            for from in [e.saturating_sub(1), e.saturating_sub(INDEX_STRIDE + 1), e / 2] {
                assert_eq!(payloads(&follower, p, from, u64::MAX), model[p as usize][from as usize..e as usize].to_vec());
            }
        }
    }
    assert_eq!(ends, all);
    assert_follows(&follower, &model, &all);
    assert_same_segments(&writer, &follower);
}

// Proves following while the writer appends: a writer thread appends (sealing segments) while
// the follower follows the writer's ends in a loop and another thread reads the follower; every
// read sees correct records, and in the end the follower equals the writer.
#[test]
fn follow_a_concurrent_writer() {
    let tmp = TempDir::new("follow-concurrent");
    let dir = tmp.log_dir();
    let writer = Arc::new(Log::open_or_create(&dir, cfg(3, 2048)).unwrap());
    let follower = Arc::new(Log::open_follower(&dir).unwrap());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (writer, done) = (Arc::clone(&writer), Arc::clone(&done));
        std::thread::spawn(move || {
            for b in 0..60u64 {
                let owned: Vec<(u32, Vec<u8>)> = (0..30)
                    .map(|i| {
                        let n = b * 30 + i;
                        ((n % 3) as u32, rec((n % 3) as u32, n / 3))
                    })
                    .collect();
                let batch: Vec<(u32, &[u8])> = owned.iter().map(|(p, v)| (*p, v.as_slice())).collect();
                writer.append(&batch).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let reader = {
        let (follower, done) = (Arc::clone(&follower), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                for p in 0..3 {
                    for (i, v) in payloads(&follower, p, 0, u64::MAX).iter().enumerate() {
                        assert_eq!(v, &rec(p, i as u64));
                    }
                }
            }
        })
    };
    loop {
        let finished = done.load(Ordering::SeqCst);
        let ends = writer.end_offsets();
        follower.follow_to(&ends).unwrap();
        assert_eq!(follower.end_offsets(), ends);
        if finished {
            break;
        }
    }
    appender.join().unwrap();
    reader.join().unwrap();
    assert_eq!(follower.end_offsets(), vec![600, 600, 600]);
    for p in 0..3 {
        assert_eq!(payloads(&follower, p, 0, u64::MAX), (0..600).map(|i| rec(p, i)).collect::<Vec<_>>());
    }
    assert_same_segments(&writer, &follower);
}

// Proves a follower changes nothing on disk: with a torn tail on an active segment, recovery
// debris (MANIFEST.tmp, ROLLBACK, ROLLBACK.tmp) and a partition without a segment file, opening,
// following, reading and verifying leave every file's bytes and every directory listing as they
// were; append and rollback_to are refused with ReadOnly.
#[test]
fn follower_never_modifies_files() {
    let tmp = TempDir::new("follow-readonly");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let writer = Log::open_or_create(&dir, cfg(3, framed * 4)).unwrap();
    let mut model: Model = vec![Vec::new(); 3];
    group_append(&writer, &mut model, &[10, 3, 0]);
    let acked = writer.end_offsets();
    let active = segment_files(&dir, 0).pop().unwrap();
    OpenOptions::new().append(true).open(&active).unwrap().write_all(b"\x30\x00\x00\x00torn").unwrap();
    fs::write(dir.join("MANIFEST.tmp"), b"{\"format_ver").unwrap();
    fs::write(dir.join("ROLLBACK"), b"{\"format_version\": 1, \"ends\": [0, 0, 0]}").unwrap();
    fs::write(dir.join("ROLLBACK.tmp"), b"{").unwrap();
    let before = tree_image(tmp.path());

    let follower = Log::open_follower(&dir).unwrap();
    follower.follow_to(&acked).unwrap();
    assert_follows(&follower, &model, &acked);
    follower.verify().unwrap();
    let err = follower.append(&[(0, b"x")]).unwrap_err();
    assert!(matches!(err, LogError::ReadOnly { ref path } if path == &dir), "{err}");
    assert!(err.to_string().contains("read-only follower"), "{err}");
    assert!(follower.append(&[]).is_err(), "even an empty batch is refused");
    assert!(matches!(follower.rollback_to(&[0, 0, 0]), Err(LogError::ReadOnly { .. })));
    assert_eq!(tree_image(tmp.path()), before);
}

// Proves follow_to's errors: ends beyond what is on disk are Corrupt naming the segment file
// (also one that does not exist yet), a damaged record below the ends is Corrupt naming file and
// byte, a wrong number of ends or a writer log is FollowInvalid; after an error the follower is
// unchanged and still works.
#[test]
fn follow_to_errors() {
    let tmp = TempDir::new("follow-errors");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let writer = Log::open_or_create(&dir, cfg(2, framed * 4)).unwrap();
    let mut model: Model = vec![Vec::new(); 2];
    group_append(&writer, &mut model, &[6, 0]);
    let follower = Log::open_follower(&dir).unwrap();
    follower.follow_to(&[5, 0]).unwrap();

    let p0_active = segment::segment_path(&dir, 0, 4);
    let err = follower.follow_to(&[7, 0]).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { ref path, byte_offset, .. } if path == &p0_active && byte_offset == 2 * framed), "{err}");
    assert!(err.to_string().contains("does not list it as sealed"), "{err}");
    let p1_missing = segment::segment_path(&dir, 1, 0);
    let err = follower.follow_to(&[6, 1]).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { ref path, byte_offset: 0, .. } if path == &p1_missing), "{err}");
    assert_eq!(follower.end_offsets(), vec![5, 0], "unchanged after errors, also for partition 0");

    for bad in [&[6u64][..], &[6, 0, 0], &[]] {
        let err = follower.follow_to(bad).unwrap_err();
        assert!(matches!(err, LogError::FollowInvalid { ref path, .. } if path == &dir), "{err}");
        assert!(err.to_string().contains(&format!("{} end offsets given for a log of 2 partitions", bad.len())), "{err}");
    }
    let err = writer.follow_to(&[6, 0]).unwrap_err();
    assert!(matches!(err, LogError::FollowInvalid { .. }) && err.to_string().contains("writer"), "{err}");

    follower.follow_to(&[6, 0]).unwrap();
    assert_follows(&follower, &model, &[6, 0]);

    // Damage below the followed end: a payload byte of record 9 (the second of segment 8).
    group_append(&writer, &mut model, &[6, 0]);
    let victim = segment::segment_path(&dir, 0, 8);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[(framed + 9) as usize] ^= 0x01;
    fs::write(&victim, bytes).unwrap();
    follower.follow_to(&[8, 0]).unwrap();
    follower.follow_to(&[9, 0]).unwrap();
    let err = follower.follow_to(&[12, 0]).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { ref path, byte_offset, .. } if path == &victim && byte_offset == framed), "{err}");
    assert_eq!(follower.end_offsets(), vec![9, 0]);
}

// Proves open_follower's checks, none of which create anything: no directory or an empty one
// is NotFound, partition directories without MANIFEST are ManifestInvalid, and a sealed segment
// of the wrong length is SegmentInvalid naming it.
#[test]
fn open_follower_errors() {
    let tmp = TempDir::new("follow-open");
    let dir = tmp.log_dir();
    assert!(matches!(Log::open_follower(&dir), Err(LogError::NotFound { ref path }) if path == &dir));
    assert!(!dir.exists());
    fs::create_dir(&dir).unwrap();
    assert!(matches!(Log::open_follower(&dir), Err(LogError::NotFound { .. })));
    fs::create_dir(dir.join("p0000")).unwrap();
    let err = Log::open_follower(&dir).unwrap_err();
    assert!(matches!(err, LogError::ManifestInvalid { ref path, .. } if path == &dir.join("MANIFEST")), "{err}");
    fs::remove_dir_all(&dir).unwrap();

    let framed = framed_len(rec(0, 0).len());
    let writer = Log::open_or_create(&dir, cfg(1, framed * 4)).unwrap();
    group_append(&writer, &mut vec![Vec::new()], &[6]);
    drop(writer);
    let sealed = segment::segment_path(&dir, 0, 0);
    OpenOptions::new().append(true).open(&sealed).unwrap().write_all(b"x").unwrap();
    let before = tree_image(tmp.path());
    let err = Log::open_follower(&dir).unwrap_err();
    assert!(matches!(err, LogError::SegmentInvalid { ref path, .. } if path == &sealed), "{err}");
    assert_eq!(tree_image(tmp.path()), before);
}

// Proves a follower is unaffected by a writer's failed append, which seals a segment and then
// withdraws the seal (and removes the segment it created): following the acknowledged ends
// before, after the failure and after the retry gives exactly the writer's records.
#[test]
fn follow_across_a_failed_append() {
    let tmp = TempDir::new("follow-failed");
    let dir = tmp.log_dir();
    let framed = framed_len(rec(0, 0).len());
    let writer = Log::open_or_create(&dir, cfg(2, framed * 4)).unwrap();
    let follower = Log::open_follower(&dir).unwrap();
    let mut model: Model = vec![Vec::new(); 2];
    group_append(&writer, &mut model, &[3, 3]);
    follower.follow_to(&writer.end_offsets()).unwrap();

    let blocker = segment::segment_path(&dir, 1, 4);
    fs::create_dir(&blocker).unwrap();
    let more: Vec<(u32, Vec<u8>)> = (3..6).flat_map(|i| [(0, rec(0, i)), (1, rec(1, i))]).collect();
    let batch: Vec<(u32, &[u8])> = more.iter().map(|(p, v)| (*p, v.as_slice())).collect();
    writer.append(&batch).unwrap_err();
    follower.follow_to(&writer.end_offsets()).unwrap();
    assert_follows(&follower, &model, &[3, 3]);
    fs::remove_dir(&blocker).unwrap();

    writer.append(&batch).unwrap();
    for (p, v) in more {
        model[p as usize].push(v);
    }
    follower.follow_to(&writer.end_offsets()).unwrap();
    assert_follows(&follower, &model, &[6, 6]);
    assert_same_segments(&writer, &follower);
}

#[derive(Clone, Debug)]
enum FollowOp {
    Append(Vec<(u32, Vec<u8>)>),
    /// Follow each partition this fraction of the way from the follower's end to the writer's.
    Follow(Vec<f64>),
    /// Replace the follower by a newly opened one.
    Reopen,
}

fn follow_op_strategy() -> impl Strategy<Value = FollowOp> {
    prop_oneof![
        4 => prop::collection::vec((0u32..4, prop::collection::vec(any::<u8>(), 0..48)), 0..20).prop_map(FollowOp::Append),
        4 => prop::collection::vec(0.0f64..=1.0, 4).prop_map(FollowOp::Follow),
        1 => Just(FollowOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    // Proves, against the writer, that a follower following random points between its end and
    // the writer's (random batches and payload sizes, random small segments so that seals land
    // anywhere, followers reopened at random) holds exactly the first `ends` records, and in the
    // end exactly the writer's records and segments.
    #[test]
    fn follower_matches_writer(
        partitions in 1u32..4,
        segment_bytes in 1u64..300,
        ops in prop::collection::vec(follow_op_strategy(), 1..20),
    ) {
        let tmp = TempDir::new("follow-prop");
        let dir = tmp.log_dir();
        let writer = Log::open_or_create(&dir, cfg(partitions, segment_bytes)).unwrap();
        let mut follower = Log::open_follower(&dir).unwrap();
        let mut model: Model = vec![Vec::new(); partitions as usize];
        for op in ops {
            match op {
                FollowOp::Append(batch) => {
                    let refs: Vec<(u32, &[u8])> = batch.iter().map(|(p, v)| (p % partitions, v.as_slice())).collect();
                    for (pos, (p, v)) in writer.append(&refs).unwrap().iter().zip(&refs) {
                        prop_assert_eq!(pos.offset, model[*p as usize].len() as u64);
                        model[*p as usize].push(v.to_vec());
                    }
                }
                FollowOp::Follow(fracs) => {
                    let known = follower.end_offsets();
                    let ends: Vec<u64> = known
                        .iter()
                        .zip(writer.end_offsets())
                        .zip(&fracs)
                        .map(|((&k, w), f)| k + ((w - k) as f64 * f).round() as u64)
                        .collect();
                    follower.follow_to(&ends).unwrap();
                    assert_follows(&follower, &model, &ends);
                }
                FollowOp::Reopen => {
                    follower = Log::open_follower(&dir).unwrap();
                    let sealed = Manifest::load(&dir).unwrap().unwrap();
                    let sealed_ends: Vec<u64> = (0..partitions as usize).map(|p| sealed.sealed_end(p)).collect();
                    assert_follows(&follower, &model, &sealed_ends);
                }
            }
        }
        follower.follow_to(&writer.end_offsets()).unwrap();
        assert_follows(&follower, &model, &ends_of(&model));
        assert_same_segments(&writer, &follower);
    }
}

// Measures append and sequential-read throughput (not a pass/fail test). Run with
// `cargo test --release -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let tmp = TempDir::new("bench");
    let log = Log::open_or_create(&tmp.log_dir(), LogConfig::default()).unwrap();
    let total: u64 = 4_000_000;
    let batch_size: u64 = 10_000;
    let payload_len = 40;
    let owned: Vec<(u32, Vec<u8>)> = (0..batch_size).map(|i| ((i % 4) as u32, vec![(i % 251) as u8; payload_len])).collect();
    let batch: Vec<(u32, &[u8])> = owned.iter().map(|(p, v)| (*p, v.as_slice())).collect();
    let t = Instant::now();
    for _ in 0..total / batch_size {
        log.append(&batch).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let bytes: u64 = log.disk_bytes().iter().sum();
    println!(
        "append: {total} records of {payload_len} B in batches of {batch_size}: {secs:.2}s = \
         {:.2} M records/s, {:.0} MB/s",
        total as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );

    let t = Instant::now();
    let mut n = 0u64;
    let mut sum = 0u64;
    for p in 0..4 {
        n += log
            .read(p, 0, u64::MAX, |_, v| {
                sum += v.len() as u64;
                Ok::<(), LogError>(())
            })
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(n, total);
    assert_eq!(sum, total * payload_len as u64);
    println!(
        "read: {n} records, {bytes} bytes in {secs:.3}s = {:.0} MB/s, {:.1} M records/s",
        bytes as f64 / secs / 1e6,
        n as f64 / secs / 1e6
    );
    let small: Vec<(u32, &[u8])> = (0..4).map(|p| (p, &owned[0].1[..])).collect();
    let calls = 500;
    let t = Instant::now();
    for _ in 0..calls {
        log.append(&small).unwrap();
    }
    println!("group-commit latency: {:.0} us per append of 4 records on 4 partitions", t.elapsed().as_secs_f64() * 1e6 / calls as f64);

    let t = Instant::now();
    log.verify().unwrap();
    println!("verify: {:.3}s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    drop(log);
    let log = Log::open(&tmp.log_dir()).unwrap();
    println!("reopen (recovery scans only the active segments): {:.3}s, ends {:?}", t.elapsed().as_secs_f64(), log.end_offsets());
}
