//! Input layout shared by the targets that need more than the bytes under
//! test: byte 0 picks limits or a mode, bytes 1-2 (big-endian) pick where the
//! bytes are split in two reads, the rest are the bytes under test.
#![allow(dead_code)]

pub struct Input<'a> {
    pub sel: u8,
    /// A split point in `0..=bytes.len()`.
    pub cut: usize,
    pub bytes: &'a [u8],
}

pub fn input(data: &[u8]) -> Option<Input<'_>> {
    let (head, bytes) = data.split_first_chunk::<3>()?;
    let cut = usize::from(u16::from_be_bytes([head[1], head[2]])) % (bytes.len() + 1);
    Some(Input {
        sel: head[0],
        cut,
        bytes,
    })
}

/// The ways the same bytes arrive: whole, in two reads, and one byte per
/// read; each is a list of how much has arrived after every read.
pub fn schedules(len: usize, cut: usize) -> [Vec<usize>; 3] {
    [vec![len], vec![cut, len], (0..=len).collect()]
}
