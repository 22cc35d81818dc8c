//! The on-disk record format.
//!
//! Every record is a fixed 36-byte header followed by its payload. All
//! integers are little-endian.
//!
//! ```text
//!  offset  size  field
//!       0     4  crc     CRC32C of bytes 4..36 of this header, then the payload
//!       4     4  len     payload length in bytes
//!       8     8  index   position in the log (the Raft index)
//!      16     8  offset  dense data offset (see below)
//!      24     8  term    the term of the entry (opaque to storage)
//!      32     1  kind    0 = data, 1 = control
//!      33     3  zero    reserved, must be zero
//!      36   len  payload
//! ```
//!
//! Worked example: the second data record of a log whose index 1 is a control
//! entry (a Raft blank entry) looks like `index = 2, offset = 1, kind = 0`;
//! the control entry before it is `index = 1, offset = 1, kind = 1`. A control
//! entry's `offset` is the offset the *next* data record will receive, so the
//! field never decreases and grows by exactly one after every data record.
//!
//! The checksum covers every header field, so a torn or bit-flipped header is
//! as detectable as a torn payload.

use bytes::Bytes;

/// Size of the fixed header that precedes each payload.
pub const HEADER_LEN: usize = 36;

/// Whether a record carries user data or an internal control entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A record produced by a client; it has a data offset consumers see.
    Data = 0,
    /// An internal entry (Raft blank or membership entry), never shown to
    /// consumers; it does not consume a data offset.
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

/// A record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position in the log (the Raft index).
    pub index: u64,
    /// Dense data offset. For control entries, the offset of the next data record.
    pub offset: u64,
    pub term: u64,
    pub kind: Kind,
    pub payload: Bytes,
}

/// A record to append.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The index the caller wants; `None` takes the next one in sequence.
    pub index: Option<u64>,
    pub term: u64,
    pub kind: Kind,
    pub payload: &'a [u8],
}

impl<'a> Entry<'a> {
    /// A data record at the next index, term 0.
    pub fn data(payload: &'a [u8]) -> Self {
        Entry {
            index: None,
            term: 0,
            kind: Kind::Data,
            payload,
        }
    }
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub crc: u32,
    pub len: u32,
    pub index: u64,
    pub offset: u64,
    pub term: u64,
    pub kind: Kind,
}

impl Header {
    /// Length of header plus payload.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Why a header could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    UnknownKind(u8),
    ReservedNotZero,
}

/// Appends the encoded record to `buf`.
pub fn encode(buf: &mut Vec<u8>, index: u64, offset: u64, term: u64, kind: Kind, payload: &[u8]) {
    let start = buf.len();
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    buf.extend_from_slice(&[kind as u8, 0, 0, 0]);
    buf.extend_from_slice(payload);
    let crc = checksum(&buf[start + 4..start + HEADER_LEN], payload);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// Decodes the fixed header (does not verify the checksum).
pub fn decode_header(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let kind = Kind::from_u8(b[32]).ok_or(HeaderError::UnknownKind(b[32]))?;
    if b[33..36] != [0, 0, 0] {
        return Err(HeaderError::ReservedNotZero);
    }
    Ok(Header {
        crc: u32_at(0),
        len: u32_at(4),
        index: u64_at(8),
        offset: u64_at(16),
        term: u64_at(24),
        kind,
    })
}

/// True when the header's checksum matches its fields and the payload.
pub fn verify(header_bytes: &[u8; HEADER_LEN], payload: &[u8]) -> bool {
    let crc = u32::from_le_bytes(header_bytes[0..4].try_into().expect("4 bytes"));
    crc == checksum(&header_bytes[4..], payload)
}

/// Decodes and verifies one complete record (`bytes` = header + payload).
pub fn decode_record(bytes: &[u8]) -> Option<Record> {
    let hb: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let h = decode_header(hb).ok()?;
    let payload = bytes.get(HEADER_LEN..HEADER_LEN + h.len as usize)?;
    if bytes.len() != HEADER_LEN + h.len as usize || !verify(hb, payload) {
        return None;
    }
    Some(Record {
        index: h.index,
        offset: h.offset,
        term: h.term,
        kind: h.kind,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_record_decodes_to_the_same_fields() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 3, 2, Kind::Control, b"hello");
        assert_eq!(buf.len(), HEADER_LEN + 5);
        let r = decode_record(&buf).expect("valid record");
        assert_eq!((r.index, r.offset, r.term, r.kind), (7, 3, 2, Kind::Control));
        assert_eq!(&r.payload[..], b"hello");
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 1, 1, Kind::Data, b"payload bytes");
        for bit in 0..buf.len() * 8 {
            let mut copy = buf.clone();
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&copy).is_none(), "flip of bit {bit} went unnoticed");
        }
    }
}
