//! Incremental decoder for the `chunked` transfer coding (RFC 9112 section 7.1).
//!
//! Sans-I/O: feed whatever bytes arrived, get payload appended to an output
//! buffer and the count of input bytes consumed. The same input split at any
//! point decodes to the same payload, which is what lets the connection loop
//! and the fuzz targets treat it as a pure function of the byte stream.
//!
//! Strictness is deliberate: a proxy that is more lenient than the peer behind
//! or in front of it is a smuggling vector, so line endings must be CRLF, the
//! size must be plain hex without sign or whitespace, and extensions and
//! trailers are bounded.

use thiserror::Error;

/// Longest chunk-size line we accept (size, extensions and CRLF).
pub const MAX_CHUNK_LINE_BYTES: usize = 256;
/// More hex digits than this cannot fit a `u64` after leading zeros are removed;
/// we also refuse absurd zero-padding.
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    #[error("malformed chunk size")]
    BadSize,
    #[error("malformed chunk framing (expected CRLF)")]
    BadLine,
    #[error("chunk extension too long")]
    ExtensionTooLong,
    #[error("chunked body exceeds the limit")]
    TooLarge,
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("malformed trailer field")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a chunk-size line into `line`.
    SizeLine,
    /// Copying `remaining` payload bytes.
    Data {
        remaining: u64,
    },
    /// Expecting the CR then LF that end a chunk's data (`seen_cr`).
    DataEnd {
        seen_cr: bool,
    },
    /// Collecting one trailer line (or the final empty line) into `line`.
    Trailer,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    body_len: u64,
    max_body: u64,
    trailer_len: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(max_body: u64, max_trailer_bytes: usize) -> Self {
        ChunkedDecoder {
            state: State::SizeLine,
            line: Vec::new(),
            body_len: 0,
            max_body,
            trailer_len: 0,
            max_trailer_bytes,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes decoded so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Decodes from `input`, appending payload to `out`. Returns how many input
    /// bytes were consumed; stops right after the final CRLF, so bytes of a
    /// pipelined next message are left unconsumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                State::Done => break,
                State::SizeLine => {
                    let (used, line_done) = self.take_line(&input[pos..], MAX_CHUNK_LINE_BYTES)?;
                    pos += used;
                    if line_done {
                        let size = parse_size_line(&self.line)?;
                        self.line.clear();
                        if size == 0 {
                            self.state = State::Trailer;
                        } else {
                            if self.body_len.saturating_add(size) > self.max_body {
                                return Err(ChunkError::TooLarge);
                            }
                            self.state = State::Data { remaining: size };
                        }
                    }
                }
                State::Data { remaining } => {
                    let avail = (input.len() - pos) as u64;
                    let n = remaining.min(avail) as usize;
                    out.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                    self.body_len += n as u64;
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd { seen_cr: false }
                    } else {
                        State::Data { remaining: left }
                    };
                }
                State::DataEnd { seen_cr } => {
                    let b = input[pos];
                    pos += 1;
                    match (seen_cr, b) {
                        (false, b'\r') => self.state = State::DataEnd { seen_cr: true },
                        (true, b'\n') => self.state = State::SizeLine,
                        _ => return Err(ChunkError::BadLine),
                    }
                }
                State::Trailer => {
                    let budget = self.max_trailer_bytes.saturating_sub(self.trailer_len) + 2;
                    let (used, line_done) = match self.take_line(&input[pos..], budget) {
                        Err(ChunkError::ExtensionTooLong) => {
                            return Err(ChunkError::TrailersTooLarge)
                        }
                        other => other?,
                    };
                    pos += used;
                    if line_done {
                        // Counted once the line is whole: the budget above
                        // already charges the part of it buffered in `line`.
                        self.trailer_len += self.line.len();
                        if self.line.len() == 2 {
                            self.state = State::Done;
                        } else {
                            check_trailer_field(&self.line[..self.line.len() - 2])?;
                        }
                        self.line.clear();
                    }
                }
            }
        }
        Ok(pos)
    }

    /// Appends bytes up to and including a CRLF to `self.line`. Returns the
    /// bytes used and whether the line is complete. A bare LF or a CR not
    /// followed by LF is a framing error.
    fn take_line(&mut self, input: &[u8], max: usize) -> Result<(usize, bool), ChunkError> {
        for (i, &b) in input.iter().enumerate() {
            let prev_cr = self.line.last() == Some(&b'\r');
            if prev_cr && b != b'\n' {
                return Err(ChunkError::BadLine);
            }
            if b == b'\n' && !prev_cr {
                return Err(ChunkError::BadLine);
            }
            if b == 0 {
                return Err(ChunkError::BadLine);
            }
            self.line.push(b);
            if self.line.len() > max {
                return Err(ChunkError::ExtensionTooLong);
            }
            if b == b'\n' {
                return Ok((i + 1, true));
            }
        }
        Ok((input.len(), false))
    }
}

/// `chunk-size [ chunk-ext ] CRLF` where the line still ends in CRLF.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let line = &line[..line.len() - 2];
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 || digits_end > MAX_SIZE_DIGITS {
        return Err(ChunkError::BadSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits_end] {
        let d = (b as char).to_digit(16).ok_or(ChunkError::BadSize)? as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(ChunkError::BadSize)?;
    }
    check_extensions(&line[digits_end..])?;
    Ok(size)
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-value ] )`; the values are
/// ignored but their syntax is checked so that no odd byte sneaks through.
fn check_extensions(mut rest: &[u8]) -> Result<(), ChunkError> {
    fn skip_ws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
        &s[n..]
    }
    fn take_token(s: &[u8]) -> Option<(&[u8], &[u8])> {
        let n = s.iter().take_while(|b| is_tchar(**b)).count();
        (n > 0).then(|| (&s[..n], &s[n..]))
    }
    loop {
        if rest.is_empty() {
            return Ok(());
        }
        // Whitespace is BWS around ";" and "=", never at the end of the
        // line: "5 \r\n" is not a chunk-size line.
        rest = skip_ws(rest);
        if rest.first() != Some(&b';') {
            return Err(ChunkError::BadSize);
        }
        rest = skip_ws(&rest[1..]);
        let (_, after) = take_token(rest).ok_or(ChunkError::BadSize)?;
        rest = after;
        let before_eq = skip_ws(rest);
        if before_eq.first() == Some(&b'=') {
            rest = skip_ws(&before_eq[1..]);
            if rest.first() == Some(&b'"') {
                rest = skip_quoted(&rest[1..]).ok_or(ChunkError::BadSize)?;
            } else {
                let (_, after) = take_token(rest).ok_or(ChunkError::BadSize)?;
                rest = after;
            }
        }
    }
}

/// Skips the rest of a quoted-string whose opening quote was consumed.
fn skip_quoted(s: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(&s[i + 1..]),
            b'\\' if i + 1 < s.len() => i += 2,
            b'\t' | b' '..=b'~' | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

fn check_trailer_field(line: &[u8]) -> Result<(), ChunkError> {
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or(ChunkError::BadTrailer)?;
    if colon == 0 || !line[..colon].iter().all(|b| is_tchar(*b)) {
        return Err(ChunkError::BadTrailer);
    }
    if line[colon + 1..]
        .iter()
        .any(|b| *b != b'\t' && (*b < b' ' || *b == 0x7f))
    {
        return Err(ChunkError::BadTrailer);
    }
    Ok(())
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: u64) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new(max, 1024);
        let mut out = Vec::new();
        let used = d.decode(input, &mut out)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn decodes_simple_body_and_stops_at_end() {
        let input = b"4\r\nWiki\r\n5;name=val\r\npedia\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let (out, used, done) = decode_all(input, 1 << 20).unwrap();
        assert_eq!(out, b"Wikipedia");
        assert!(done);
        assert_eq!(&input[used..], b"GET / HTTP/1.1");
    }

    #[test]
    fn any_split_gives_same_result() {
        let input: &[u8] = b"a;x=\"q;\\\"\"\r\n0123456789\r\n1\r\nZ\r\n0\r\n\r\n";
        let whole = decode_all(input, 100).unwrap();
        for cut in 0..=input.len() {
            let mut d = ChunkedDecoder::new(100, 1024);
            let mut out = Vec::new();
            let a = d.decode(&input[..cut], &mut out).unwrap();
            assert_eq!(a, cut, "first piece fully consumed before done");
            let b = d.decode(&input[cut..], &mut out).unwrap();
            assert_eq!((out.clone(), a + b, d.is_done()), whole, "cut at {cut}");
        }
    }

    #[test]
    fn rejects_bad_sizes_and_lines() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"g\r\n", ChunkError::BadSize),
            (b"-1\r\n", ChunkError::BadSize),
            (b"+1\r\n", ChunkError::BadSize),
            (b" 1\r\n", ChunkError::BadSize),
            (b"0x1\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"1\nA\r\n", ChunkError::BadLine),
            (b"1\r\nAB\r\n", ChunkError::BadLine),
            (b"1\r\nA\n", ChunkError::BadLine),
            (b"1\rx", ChunkError::BadLine),
            (b"11111111111111111\r\n", ChunkError::BadSize),
            (b"1;\r\n", ChunkError::BadSize),
            // Whitespace only as BWS before ";" or "=" (RFC 9112 section 7.1.1).
            (b"1 \r\n", ChunkError::BadSize),
            (b"1\t\r\n", ChunkError::BadSize),
            (b"1;a \r\n", ChunkError::BadSize),
            (b"1;a=b \r\n", ChunkError::BadSize),
            (b"1;a=\"x\r\n", ChunkError::BadSize),
            (
                b"1 ; a\r\nA\r\n0\r\nbad trailer\r\n\r\n",
                ChunkError::BadTrailer,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_all(input, 1 << 40).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits() {
        assert_eq!(decode_all(b"11\r\n", 16).unwrap_err(), ChunkError::TooLarge);
        assert!(decode_all(b"10\r\n", 16).is_ok());
        let long_ext = format!("1;{}\r\n", "a".repeat(MAX_CHUNK_LINE_BYTES));
        assert_eq!(
            decode_all(long_ext.as_bytes(), 16).unwrap_err(),
            ChunkError::ExtensionTooLong
        );
        let mut d = ChunkedDecoder::new(16, 8);
        let r = d.decode(b"0\r\nX-Long: 123456789\r\n\r\n", &mut Vec::new());
        assert_eq!(r.unwrap_err(), ChunkError::TrailersTooLarge);
    }

    /// Found by `fuzz/chunked`: a trailer line split across two reads was
    /// charged twice against the trailer limit, so it was refused only when
    /// it arrived in pieces.
    #[test]
    fn trailer_limit_does_not_depend_on_read_boundaries() {
        let input = b"1\r\nA\r\n0\r\nX-T: 12345\r\nY: 12345\r\n\r\n";
        let whole = {
            let mut d = ChunkedDecoder::new(16, 20);
            let mut out = Vec::new();
            d.decode(input, &mut out).map(|n| (n, d.is_done()))
        };
        assert_eq!(whole, Ok((input.len(), true)));
        for cut in 0..=input.len() {
            let mut d = ChunkedDecoder::new(16, 20);
            let mut out = Vec::new();
            let a = d.decode(&input[..cut], &mut out);
            let b = d.decode(&input[cut..], &mut out);
            assert_eq!(a.and(b).map(|_| d.is_done()), Ok(true), "cut at {cut}");
        }
        // One byte more is over the limit, however it arrives.
        let over = b"0\r\nX-T: 12345\r\nY: 123456\r\n\r\n";
        for cut in 0..=over.len() {
            let mut d = ChunkedDecoder::new(16, 20);
            let mut out = Vec::new();
            let r = d
                .decode(&over[..cut], &mut out)
                .and_then(|_| d.decode(&over[cut..], &mut out));
            assert_eq!(r, Err(ChunkError::TrailersTooLarge), "cut at {cut}");
        }
    }

    #[test]
    fn overflowing_size_is_rejected() {
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\n", 1 << 40).unwrap_err(),
            ChunkError::TooLarge
        );
    }
}
