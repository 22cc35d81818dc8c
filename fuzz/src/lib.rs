//! Shared by the fuzz targets and the corpus generator: the input format of
//! `segment_recovery` and an independent model of the on-disk format (file
//! header, batch header, checksum, record framing) written from
//! `docs/architecture.md` rather than from `src/storage`, so the targets
//! check the storage layer against a second reading of the format.

/// `segment_recovery` input flags (first byte).
pub mod flags {
    /// Two segment files (the first one sealed), else one.
    pub const TWO_SEGMENTS: u8 = 1;
    /// The harness writes each segment's 32-byte file header from the
    /// input's base index/offset; else the segment parts hold their own.
    pub const HEADERS: u8 = 2;
    /// The harness recomputes every batch checksum it can find, so
    /// mutations get past the CRC to the structural checks.
    pub const FIX_CRC: u8 = 4;
    /// Write a `CLEAN` marker for the active segment (a clean shutdown).
    pub const CLEAN: u8 = 8;
    /// The active segment has an `.idx` file: the index of its valid
    /// batches XOR the input's part 4 (bytes past its end extend it), so an
    /// empty part is a faithful index and a small one a small damage.
    pub const ACTIVE_INDEX: u8 = 16;
    /// The sealed segment's `.idx` is damaged: its faithful index (what
    /// sealing leaves) XOR the input's part 3, as for `ACTIVE_INDEX`.
    pub const DAMAGE_SEALED_INDEX: u8 = 32;
    /// With `HEADERS`: the second segment starts where the first one's
    /// valid batches end, else at the input's deltas.
    pub const CONTINUE: u8 = 64;
    /// The harness rewrites the index and base offset of every batch it can
    /// find to continue the file header's (before `FIX_CRC`), so extreme
    /// bases in the header reach the batches.
    pub const RENUMBER: u8 = 128;
}

pub const FILE_HEADER_LEN: usize = 32;
pub const BATCH_HEADER_LEN: usize = 64;
const FIXED: usize = 23;

/// A decoded `segment_recovery` input.
#[derive(Debug, Default, Clone)]
pub struct Input<'a> {
    pub flags: u8,
    pub base_index: u64,
    pub base_offset: u64,
    pub clean_entries: u16,
    pub seg1_index_delta: u16,
    pub seg1_offset_delta: u16,
    /// Segment 0, segment 1, sealed index, active index.
    pub parts: [&'a [u8]; 4],
}

impl<'a> Input<'a> {
    /// Layout: flags u8, base index u64, base offset u64, CLEAN entries
    /// u16, segment 1 index and offset deltas u16 each (all little-endian),
    /// then four parts, each a u32 length and its bytes (lengths clamped to
    /// what is left; the last part takes the rest).
    pub fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        if data.len() < FIXED {
            return None;
        }
        let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
        let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().unwrap());
        let mut input = Input {
            flags: data[0],
            base_index: u64_at(1),
            base_offset: u64_at(9),
            clean_entries: u16_at(17),
            seg1_index_delta: u16_at(19),
            seg1_offset_delta: u16_at(21),
            parts: [&[]; 4],
        };
        let mut rest = &data[FIXED..];
        for i in 0..4 {
            if i == 3 {
                input.parts[i] = rest;
                break;
            }
            if rest.len() < 4 {
                input.parts[i] = rest;
                rest = &[];
                continue;
            }
            let len = (u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize).min(rest.len() - 4);
            input.parts[i] = &rest[4..4 + len];
            rest = &rest[4 + len..];
        }
        Some(input)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.flags];
        out.extend_from_slice(&self.base_index.to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.clean_entries.to_le_bytes());
        out.extend_from_slice(&self.seg1_index_delta.to_le_bytes());
        out.extend_from_slice(&self.seg1_offset_delta.to_le_bytes());
        for (i, p) in self.parts.iter().enumerate() {
            if i < 3 {
                out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            }
            out.extend_from_slice(p);
        }
        out
    }
}

/// The 32-byte segment file header.
pub fn file_header(base_index: u64, base_offset: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(b"SIDELOG2");
    h[8..16].copy_from_slice(&base_index.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(base index, base offset)` of a valid file header.
pub fn parse_file_header(file: &[u8]) -> Option<(u64, u64)> {
    let h = file.get(..FILE_HEADER_LEN)?;
    if &h[0..8] != b"SIDELOG2" || u32::from_le_bytes(h[28..32].try_into().unwrap()) != crc32c::crc32c(&h[0..28]) {
        return None;
    }
    Some((
        u64::from_le_bytes(h[8..16].try_into().unwrap()),
        u64::from_le_bytes(h[16..24].try_into().unwrap()),
    ))
}

/// One batch as the format defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelBatch {
    pub index: u64,
    pub base_offset: u64,
    pub term: u64,
    /// 0 = data, 1 = control.
    pub kind: u8,
    pub count: u32,
    pub producer_id: u64,
    pub producer_seq: u64,
    pub body: Vec<u8>,
}

impl ModelBatch {
    /// The batch's bytes, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BATCH_HEADER_LEN + self.body.len());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.base_offset.to_le_bytes());
        b.extend_from_slice(&self.term.to_le_bytes());
        b.extend_from_slice(&[self.kind, 0, 0, 0]);
        b.extend_from_slice(&self.count.to_le_bytes());
        b.extend_from_slice(&self.producer_id.to_le_bytes());
        b.extend_from_slice(&self.producer_seq.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&self.body);
        let crc = crc32c::crc32c(&b[4..]);
        b[0..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The record values of a data body (None when the framing is wrong).
    pub fn records(&self) -> Option<Vec<&[u8]>> {
        split_records(self.count, &self.body)
    }

    pub fn end_offset(&self) -> Option<u64> {
        self.base_offset.checked_add(u64::from(self.count))
    }
}

/// Exactly `count` framed records filling `body`.
pub fn split_records(count: u32, body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = body;
    for _ in 0..count {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().unwrap()) as usize;
        let value = rest.get(4..4usize.checked_add(len)?)?;
        out.push(value);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some(out)
}

/// Decodes and verifies the batch at the start of `bytes`; returns it and
/// its length.
pub fn decode_batch(bytes: &[u8]) -> Option<(ModelBatch, usize)> {
    let h = bytes.get(..BATCH_HEADER_LEN)?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
    let len = u32_at(4) as usize;
    let body = bytes.get(BATCH_HEADER_LEN..BATCH_HEADER_LEN.checked_add(len)?)?;
    if u32_at(0) != crc32c::crc32c_append(crc32c::crc32c(&h[4..]), body) {
        return None;
    }
    let (kind, count) = (h[32], u32_at(36));
    if h[33..36] != [0; 3] || h[56..64] != [0; 8] {
        return None;
    }
    let ok = match kind {
        0 => count > 0 && split_records(count, body).is_some(),
        1 => count == 0,
        _ => false,
    };
    ok.then(|| {
        (
            ModelBatch {
                index: u64_at(8),
                base_offset: u64_at(16),
                term: u64_at(24),
                kind,
                count,
                producer_id: u64_at(40),
                producer_seq: u64_at(48),
                body: body.to_vec(),
            },
            BATCH_HEADER_LEN + len,
        )
    })
}

/// Valid batches with their positions, then the next index and offset.
pub type Chain = (Vec<(usize, ModelBatch)>, u64, u64);

/// The valid batches of a segment file from its start: each verifies and
/// continues the previous one's index and offset. Stops at the first that
/// does not (what crash recovery keeps). Returns the batches with their
/// positions, and the next index and offset.
pub fn valid_chain(file: &[u8]) -> Option<Chain> {
    let (mut index, mut offset) = parse_file_header(file)?;
    let mut pos = FILE_HEADER_LEN;
    let mut out = Vec::new();
    while let Some((b, len)) = decode_batch(&file[pos..]) {
        if b.index != index || b.base_offset != offset {
            break;
        }
        let (Some(next_index), Some(next_offset)) = (index.checked_add(1), b.end_offset()) else {
            break;
        };
        index = next_index;
        offset = next_offset;
        out.push((pos, b));
        pos += len;
    }
    Some((out, index, offset))
}

/// Recomputes the checksum of every batch found by walking the length
/// fields from the end of the file header.
pub fn fix_checksums(file: &mut [u8]) {
    let mut pos = FILE_HEADER_LEN;
    while pos + BATCH_HEADER_LEN <= file.len() {
        let len = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let end = (pos + BATCH_HEADER_LEN).saturating_add(len).min(file.len());
        let crc = crc32c::crc32c(&file[pos + 4..end]);
        file[pos..pos + 4].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

/// Rewrites the index and base offset of every batch found by walking the
/// length fields so they continue the file header's (wrapping at the end
/// of the u64 range: that is for the storage layer to refuse).
pub fn renumber(file: &mut [u8]) {
    let Some(h) = file.get(..FILE_HEADER_LEN) else { return };
    let mut index = u64::from_le_bytes(h[8..16].try_into().unwrap());
    let mut offset = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let mut pos = FILE_HEADER_LEN;
    while pos + BATCH_HEADER_LEN <= file.len() {
        let len = u32::from_le_bytes(file[pos + 4..pos + 8].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(file[pos + 36..pos + 40].try_into().unwrap());
        file[pos + 8..pos + 16].copy_from_slice(&index.to_le_bytes());
        file[pos + 16..pos + 24].copy_from_slice(&offset.to_le_bytes());
        index = index.wrapping_add(1);
        offset = offset.wrapping_add(u64::from(count));
        pos = (pos + BATCH_HEADER_LEN).saturating_add(len).min(file.len());
    }
}

/// XORs `delta` into `bytes`; bytes of `delta` past the end are appended.
pub fn xor_into(bytes: &mut Vec<u8>, delta: &[u8]) {
    for (i, d) in delta.iter().enumerate() {
        match bytes.get_mut(i) {
            Some(b) => *b ^= d,
            None => bytes.push(*d),
        }
    }
}

/// The sealed index of a segment: one `(position, base offset)` entry per
/// valid batch, as sealing leaves it.
pub fn index_of(chain: &[(usize, ModelBatch)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chain.len() * 16);
    for (pos, b) in chain {
        out.extend_from_slice(&(*pos as u64).to_le_bytes());
        out.extend_from_slice(&b.base_offset.to_le_bytes());
    }
    out
}

/// `00000000000000001024.log`
pub fn file_name(base_index: u64, ext: &str) -> String {
    format!("{base_index:020}.{ext}")
}
