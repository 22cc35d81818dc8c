//! The on-disk batch format (format version 2).
//!
//! The unit of storage, replication, checksum and fsync is a *batch*: one
//! Raft entry. A data batch carries `count >= 1` records; a control batch
//! (a Raft blank or membership entry) carries an opaque payload and no
//! records. Every batch is a fixed 64-byte header followed by its body. All
//! integers are little-endian.
//!
//! ```text
//!  offset  size  field
//!       0     4  crc          CRC32C of bytes 4..64 of this header, then the body
//!       4     4  len          body length in bytes
//!       8     8  index        position in the log (the Raft index)
//!      16     8  base_offset  data offset of the first record (see below)
//!      24     8  term         the term of the entry (opaque to storage)
//!      32     1  kind         0 = data, 1 = control
//!      33     3  zero         reserved, must be zero
//!      36     4  count        records in the body (0 for control batches)
//!      40     8  producer_id  0 = none (idempotent produce; not used yet)
//!      48     8  producer_seq sequence number of the first record
//!      56     8  zero         reserved, must be zero
//!      64   len  body
//! ```
//!
//! A data body is `count` records back to back, each a 4-byte length and
//! its value:
//!
//! ```text
//!  [len u32][value bytes][len u32][value bytes]...
//! ```
//!
//! Offsets: the record at position `i` of a data batch has data offset
//! `base_offset + i`. A control batch's `base_offset` is the offset the
//! *next* data record gets, so the field never decreases and grows by
//! exactly `count` after every batch.
//!
//! Worked example: a log whose index 1 is a Raft blank entry, index 2 a
//! batch of three records and index 3 a batch of one looks like
//! `(index 1, base 0, control)`, `(index 2, base 0, count 3: offsets 0..=2)`,
//! `(index 3, base 3, count 1: offset 3)`; the next data record gets offset 4.
//!
//! The checksum covers every header field and the body, so a torn or
//! bit-flipped header is as detectable as a torn body.

use bytes::Bytes;

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 2;

/// Size of the fixed header that precedes each body.
pub const HEADER_LEN: usize = 64;

/// Bytes of framing per record inside a data body.
pub const RECORD_OVERHEAD: usize = 4;

/// Whether a batch carries user records or an internal control entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Records produced by clients; each has a data offset consumers see.
    Data = 0,
    /// An internal entry (Raft blank or membership entry), never shown to
    /// consumers; it takes no data offset.
    Control = 1,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        match v {
            0 => Some(Kind::Data),
            1 => Some(Kind::Control),
            _ => None,
        }
    }
}

/// Who produced a batch, for idempotent produce (reserved: always zero today).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Producer {
    pub id: u64,
    pub seq: u64,
}

/// A batch read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Position in the log (the Raft index).
    pub index: u64,
    /// Data offset of the first record. For control batches, the offset of
    /// the next data record.
    pub base_offset: u64,
    pub term: u64,
    pub kind: Kind,
    /// Records in the body (0 for control batches).
    pub count: u32,
    pub producer: Producer,
    /// The records (data) or the control payload.
    pub body: Bytes,
}

impl Batch {
    /// One past the last data offset of this batch.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }

    /// The batch's records with their offsets. The values share the body's
    /// buffer (no copy).
    pub fn records(&self) -> Records {
        Records {
            body: self.body.clone(),
            pos: 0,
            next_offset: self.base_offset,
            left: self.count,
            term: self.term,
        }
    }
}

/// One data record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// The term of the batch that holds it.
    pub term: u64,
    pub value: Bytes,
}

/// Iterator over a batch's records; see [`Batch::records`]. The body was
/// validated when the batch was decoded, so it cannot fail.
pub struct Records {
    body: Bytes,
    pos: usize,
    next_offset: u64,
    left: u32,
    term: u64,
}

impl Iterator for Records {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.left == 0 {
            return None;
        }
        let len = u32::from_le_bytes(self.body.get(self.pos..self.pos + 4)?.try_into().ok()?) as usize;
        let start = self.pos + 4;
        let value = self.body.slice(start..start + len);
        self.pos = start + len;
        self.left -= 1;
        let offset = self.next_offset;
        self.next_offset += 1;
        Some(Record {
            offset,
            term: self.term,
            value,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// A batch to append.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The index the caller wants; `None` takes the next one in sequence.
    pub index: Option<u64>,
    pub term: u64,
    pub kind: Kind,
    /// Records in `body` (must match the body for data batches; 0 for control).
    pub count: u32,
    pub producer: Producer,
    /// An encoded record body ([`encode_body`]) or a control payload.
    pub body: &'a [u8],
}

impl<'a> Entry<'a> {
    /// A data batch at the next index, term 0, from an encoded body.
    pub fn data(body: &'a [u8], count: u32) -> Self {
        Entry {
            index: None,
            term: 0,
            kind: Kind::Data,
            count,
            producer: Producer::default(),
            body,
        }
    }

    /// A control entry at the next index, term 0.
    pub fn control(payload: &'a [u8]) -> Self {
        Entry {
            index: None,
            term: 0,
            kind: Kind::Control,
            count: 0,
            producer: Producer::default(),
            body: payload,
        }
    }
}

/// Encodes record values into a data body.
pub fn encode_body<V: AsRef<[u8]>>(values: &[V]) -> Vec<u8> {
    let mut body = Vec::with_capacity(values.iter().map(|v| v.as_ref().len() + RECORD_OVERHEAD).sum());
    for v in values {
        push_record(&mut body, v.as_ref());
    }
    body
}

/// Appends one record to a data body.
pub fn push_record(body: &mut Vec<u8>, value: &[u8]) {
    body.extend_from_slice(&(value.len() as u32).to_le_bytes());
    body.extend_from_slice(value);
}

/// Why a body does not hold the records its header promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("a data batch must hold at least one record")]
    Empty,
    #[error("record {record} runs past the end of the batch body")]
    Overrun { record: u32 },
    #[error("{extra} bytes follow the batch's last record")]
    Trailing { extra: usize },
    #[error("a control entry cannot carry records")]
    ControlWithRecords,
}

/// Checks that `body` holds exactly `count` framed records (data) or that a
/// control entry claims no records.
pub fn check_body(kind: Kind, count: u32, body: &[u8]) -> Result<(), BodyError> {
    if kind == Kind::Control {
        return if count == 0 {
            Ok(())
        } else {
            Err(BodyError::ControlWithRecords)
        };
    }
    if count == 0 {
        return Err(BodyError::Empty);
    }
    let mut pos = 0usize;
    for record in 0..count {
        let overrun = BodyError::Overrun { record };
        let len = body.get(pos..pos + 4).ok_or(overrun)?;
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        pos = (pos + 4)
            .checked_add(len)
            .filter(|&end| end <= body.len())
            .ok_or(overrun)?;
    }
    if pos != body.len() {
        return Err(BodyError::Trailing {
            extra: body.len() - pos,
        });
    }
    Ok(())
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub crc: u32,
    pub len: u32,
    pub index: u64,
    pub base_offset: u64,
    pub term: u64,
    pub kind: Kind,
    pub count: u32,
    pub producer: Producer,
}

impl Header {
    /// Length of header plus body.
    pub fn batch_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }

    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// Why a header could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    UnknownKind(u8),
    ReservedNotZero,
    ControlWithRecords,
    EmptyDataBatch,
    /// The index is the last u64 (no next index) or the records' offsets
    /// run past the last u64: no log can hold such a batch.
    OutOfRange,
}

/// Appends the encoded batch to `buf`.
pub fn encode(buf: &mut Vec<u8>, index: u64, base_offset: u64, e: &Entry<'_>) {
    let start = buf.len();
    buf.reserve(HEADER_LEN + e.body.len());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&(e.body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&base_offset.to_le_bytes());
    buf.extend_from_slice(&e.term.to_le_bytes());
    buf.extend_from_slice(&[e.kind as u8, 0, 0, 0]);
    buf.extend_from_slice(&e.count.to_le_bytes());
    buf.extend_from_slice(&e.producer.id.to_le_bytes());
    buf.extend_from_slice(&e.producer.seq.to_le_bytes());
    buf.extend_from_slice(&[0u8; 8]);
    buf.extend_from_slice(e.body);
    let crc = checksum(&buf[start + 4..start + HEADER_LEN], e.body);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(header_tail: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), body)
}

/// Decodes the fixed header (does not verify the checksum).
pub fn decode_header(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let kind = Kind::from_u8(b[32]).ok_or(HeaderError::UnknownKind(b[32]))?;
    if b[33..36] != [0, 0, 0] || b[56..64] != [0; 8] {
        return Err(HeaderError::ReservedNotZero);
    }
    let count = u32_at(36);
    match kind {
        Kind::Control if count != 0 => return Err(HeaderError::ControlWithRecords),
        Kind::Data if count == 0 => return Err(HeaderError::EmptyDataBatch),
        _ => {}
    }
    // Readers compute `index + 1` and `base_offset + count` (found with
    // the segment_recovery fuzz target: crafted segments overflowed both).
    let (index, base_offset) = (u64_at(8), u64_at(16));
    if index == u64::MAX || base_offset.checked_add(u64::from(count)).is_none() {
        return Err(HeaderError::OutOfRange);
    }
    Ok(Header {
        crc: u32_at(0),
        len: u32_at(4),
        index,
        base_offset,
        term: u64_at(24),
        kind,
        count,
        producer: Producer {
            id: u64_at(40),
            seq: u64_at(48),
        },
    })
}

/// True when the header's checksum matches its fields and the body, and a
/// data body holds exactly the records the header promises.
pub fn verify(header_bytes: &[u8; HEADER_LEN], h: &Header, body: &[u8]) -> bool {
    let crc = u32::from_le_bytes(header_bytes[0..4].try_into().expect("4 bytes"));
    crc == checksum(&header_bytes[4..], body) && check_body(h.kind, h.count, body).is_ok()
}

/// Decodes and verifies one complete batch (`bytes` = header + body),
/// sharing `bytes`' buffer for the body.
pub fn decode_batch(bytes: Bytes) -> Option<Batch> {
    let hb: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let h = decode_header(hb).ok()?;
    if bytes.len() != HEADER_LEN + h.len as usize || !verify(hb, &h, &bytes[HEADER_LEN..]) {
        return None;
    }
    Some(Batch {
        index: h.index,
        base_offset: h.base_offset,
        term: h.term,
        kind: h.kind,
        count: h.count,
        producer: h.producer,
        body: bytes.slice(HEADER_LEN..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(index: u64, base: u64, e: &Entry<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, index, base, e);
        buf
    }

    #[test]
    fn encoded_batch_decodes_to_the_same_fields_and_records() {
        let body = encode_body(&[&b"hello"[..], b"", b"world"]);
        let mut e = Entry::data(&body, 3);
        e.term = 2;
        e.producer = Producer { id: 9, seq: 40 };
        let buf = encoded(7, 3, &e);
        assert_eq!(buf.len(), HEADER_LEN + 5 + 5 + 3 * RECORD_OVERHEAD);
        let b = decode_batch(buf.into()).expect("valid batch");
        assert_eq!(
            (b.index, b.base_offset, b.term, b.kind, b.count, b.producer),
            (7, 3, 2, Kind::Data, 3, Producer { id: 9, seq: 40 })
        );
        let records: Vec<_> = b.records().map(|r| (r.offset, r.value)).collect();
        assert_eq!(
            records,
            vec![(3, Bytes::from("hello")), (4, Bytes::new()), (5, Bytes::from("world"))]
        );
        assert_eq!(b.end_offset(), 6);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let body = encode_body(&[&b"payload"[..], b"bytes"]);
        let buf = encoded(1, 1, &Entry::data(&body, 2));
        for bit in 0..buf.len() * 8 {
            let mut copy = buf.clone();
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_batch(copy.into()).is_none(), "flip of bit {bit} went unnoticed");
        }
    }

    /// Found with the `segment_recovery` fuzz target (`fuzz/`): recovery
    /// overflowed `index + 1` and `base_offset + count` on such batches.
    #[test]
    fn batches_whose_index_or_offsets_do_not_fit_are_refused() {
        let body = encode_body(&[&b"a"[..], b"b"]);
        let e = Entry::data(&body, 2);
        for (index, base) in [(u64::MAX, 0), (1, u64::MAX - 1), (1, u64::MAX)] {
            let buf = encoded(index, base, &e);
            let hb: &[u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
            assert_eq!(
                decode_header(hb),
                Err(HeaderError::OutOfRange),
                "index {index} base {base}"
            );
            assert!(decode_batch(buf.into()).is_none());
        }
        let buf = encoded(u64::MAX - 1, u64::MAX - 2, &e);
        let b = decode_batch(buf.into()).expect("the last batch that fits");
        assert_eq!(b.end_offset(), u64::MAX);
    }

    #[test]
    fn bodies_that_do_not_match_their_count_are_refused() {
        let body = encode_body(&[&b"ab"[..], b"c"]);
        assert_eq!(check_body(Kind::Data, 2, &body), Ok(()));
        assert_eq!(check_body(Kind::Data, 3, &body), Err(BodyError::Overrun { record: 2 }));
        assert_eq!(check_body(Kind::Data, 1, &body), Err(BodyError::Trailing { extra: 5 }));
        assert_eq!(check_body(Kind::Data, 0, &[]), Err(BodyError::Empty));
        assert_eq!(check_body(Kind::Control, 1, &[]), Err(BodyError::ControlWithRecords));
        assert_eq!(check_body(Kind::Control, 0, b"{json}"), Ok(()));
        // A length prefix that points past the end, even by a huge amount.
        assert_eq!(
            check_body(Kind::Data, 1, &u32::MAX.to_le_bytes()),
            Err(BodyError::Overrun { record: 0 })
        );
    }
}
