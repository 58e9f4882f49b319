//! The answer: a sans-I/O parser that gives the same result however the
//! bytes are split, strict about framing.

use super::{ClientError, Failure};
use crate::http::chunked::{ChunkError, ChunkedDecoder};

pub(super) const MAX_ANSWER_HEADERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResponse {
    pub status: u16,
    /// Names lowercased, in arrival order, duplicates kept.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl CheckResponse {
    /// First value of a header; `name` must be lowercase.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl From<ChunkError> for ClientError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::TooLarge => ClientError::TooLarge("body"),
            ChunkError::TrailersTooLarge => ClientError::TooLarge("trailer"),
            other => ClientError::Malformed(other.to_string()),
        }
    }
}

/// The answer parser as a pure function of the bytes, for fuzzing and tests:
/// `pieces` arrive in order (as separate reads), then the peer closes unless
/// the answer was complete before. Returns the answer and whether its
/// connection could be pooled. The same bytes in any pieces give the same
/// answer; only reuse can differ, since a read that ends exactly with the
/// answer cannot see bytes that come after it.
pub fn parse_answer<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    max_head_bytes: usize,
    max_body_bytes: usize,
    head_only: bool,
) -> Result<(CheckResponse, bool), ClientError> {
    let mut p = AnswerParser::new(max_head_bytes, max_body_bytes, head_only);
    for piece in pieces {
        if let Progress::Done { reusable } = p.feed(piece)? {
            return Ok((p.into_response(), reusable));
        }
    }
    match p.finish_eof() {
        Ok(()) => Ok((p.into_response(), false)),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Stale) => Err(ClientError::Closed),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    NeedMore,
    /// `reusable`: the server keeps the connection open and sent nothing past
    /// the answer.
    Done {
        reusable: bool,
    },
}

#[derive(Debug)]
enum Phase {
    Head,
    Fixed(u64),
    Chunked(ChunkedDecoder),
    UntilEof,
    Done,
}

/// Incremental, sans-I/O reader of one answer (interim 1xx answers skipped).
#[derive(Debug)]
pub(super) struct AnswerParser {
    max_head: usize,
    max_body: usize,
    head_only: bool,
    /// Head bytes buffered until the blank line arrives.
    head: Vec<u8>,
    /// Head bytes of every head so far, so a stream of 1xx cannot go forever.
    head_total: usize,
    phase: Phase,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    keep_alive: bool,
}

impl AnswerParser {
    pub(super) fn new(max_head: usize, max_body: usize, head_only: bool) -> Self {
        AnswerParser {
            max_head,
            max_body,
            head_only,
            head: Vec::new(),
            head_total: 0,
            phase: Phase::Head,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            keep_alive: false,
        }
    }

    pub(super) fn feed(&mut self, mut input: &[u8]) -> Result<Progress, ClientError> {
        loop {
            match &mut self.phase {
                Phase::Head => match self.take_head(input)? {
                    Some(used) => input = &input[used..],
                    None => return Ok(Progress::NeedMore),
                },
                Phase::Fixed(remaining) => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    self.body.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    *remaining -= n as u64;
                    if *remaining > 0 {
                        return Ok(Progress::NeedMore);
                    }
                    self.phase = Phase::Done;
                }
                Phase::Chunked(decoder) => {
                    let used = decoder.decode(input, &mut self.body)?;
                    input = &input[used..];
                    if !decoder.is_done() {
                        return Ok(Progress::NeedMore);
                    }
                    self.phase = Phase::Done;
                }
                Phase::UntilEof => {
                    if self.body.len() + input.len() > self.max_body {
                        return Err(ClientError::TooLarge("body"));
                    }
                    self.body.extend_from_slice(input);
                    return Ok(Progress::NeedMore);
                }
                Phase::Done => {
                    return Ok(Progress::Done {
                        reusable: self.keep_alive && input.is_empty(),
                    })
                }
            }
        }
    }

    /// The peer closed its side: fine only for an answer framed by EOF.
    pub(super) fn finish_eof(&mut self) -> Result<(), Failure> {
        match self.phase {
            Phase::UntilEof | Phase::Done => {
                self.phase = Phase::Done;
                Ok(())
            }
            _ => Err(Failure::Fatal(ClientError::Closed)),
        }
    }

    pub(super) fn into_response(self) -> CheckResponse {
        CheckResponse {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }

    /// Buffers head bytes; once the blank line is in, parses the head and
    /// returns how many bytes of `input` it used.
    fn take_head(&mut self, input: &[u8]) -> Result<Option<usize>, ClientError> {
        let budget = self.max_head.saturating_sub(self.head_total);
        // Look no further than one byte past the budget: a read that ended
        // there would be refused as too large, so the same bytes arriving in
        // one read must be too, whatever a later bare LF would say.
        let room = (budget + 1)
            .saturating_sub(self.head.len())
            .min(input.len());
        let Some(used) = find_head_end(&self.head, &input[..room])? else {
            if self.head.len() + input.len() > budget {
                return Err(ClientError::TooLarge("head"));
            }
            self.head.extend_from_slice(input);
            return Ok(None);
        };
        if self.head.len() + used > budget {
            return Err(ClientError::TooLarge("head"));
        }
        self.head_total += self.head.len() + used;
        if self.head.is_empty() {
            // Common case: the whole head came in one read; no copy.
            self.parse_head(&input[..used])?;
        } else {
            let mut head = std::mem::take(&mut self.head);
            head.extend_from_slice(&input[..used]);
            let parsed = self.parse_head(&head);
            head.clear();
            self.head = head;
            parsed?;
        }
        Ok(Some(used))
    }

    fn parse_head(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        // httparse skips empty lines before the status line; an answer that
        // starts with one is out of step with our request.
        if !bytes.starts_with(b"HTTP/") {
            return Err(malformed("no status line"));
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        match resp.parse(bytes) {
            Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
            Ok(_) => return Err(malformed("head does not end at the blank line")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ClientError::TooLarge("header count"))
            }
            Err(e) => return Err(ClientError::Malformed(format!("head: {e}"))),
        }
        let status = resp.code.unwrap_or(0);
        let http11 = resp.version == Some(1);
        if !(100..=599).contains(&status) {
            return Err(malformed("status code out of range"));
        }
        if status == 101 {
            return Err(malformed("101 Switching Protocols was not asked for"));
        }
        if status < 200 {
            return Ok(());
        }
        let mut content_length: Option<u64> = None;
        let mut te_tokens = 0usize;
        let mut chunked = false;
        let mut close = !http11;
        self.headers.reserve(resp.headers.len());
        for h in resp.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            match name.as_str() {
                "content-length" => {
                    let n = parse_content_length(h.value)?;
                    if content_length.is_some_and(|prev| prev != n) {
                        return Err(malformed("conflicting content-length"));
                    }
                    content_length = Some(n);
                }
                "transfer-encoding" => {
                    for token in tokens(h.value) {
                        te_tokens += 1;
                        chunked = token.eq_ignore_ascii_case(b"chunked");
                    }
                    if tokens(h.value).next().is_none() {
                        return Err(malformed("empty transfer-encoding"));
                    }
                }
                "connection" => {
                    close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
                }
                _ => {}
            }
            self.headers.push((name, h.value.to_vec()));
        }
        self.status = status;
        self.keep_alive = !close;
        if te_tokens > 0 {
            if !http11 {
                return Err(malformed("transfer-encoding in an HTTP/1.0 answer"));
            }
            if content_length.is_some() {
                return Err(malformed("both transfer-encoding and content-length"));
            }
            // Only a lone `chunked` is decodable here; anything else would
            // be read as bytes of some other coding.
            if te_tokens != 1 || !chunked {
                return Err(malformed("unsupported transfer-encoding"));
            }
        }
        self.phase = if self.head_only || status == 204 || status == 304 {
            Phase::Done
        } else if te_tokens > 0 {
            Phase::Chunked(ChunkedDecoder::new(self.max_body as u64, self.max_head))
        } else if let Some(n) = content_length {
            if n > self.max_body as u64 {
                return Err(ClientError::TooLarge("body"));
            }
            self.body.reserve(n as usize);
            if n == 0 {
                Phase::Done
            } else {
                Phase::Fixed(n)
            }
        } else {
            self.keep_alive = false;
            Phase::UntilEof
        };
        Ok(())
    }
}

fn malformed(what: &str) -> ClientError {
    ClientError::Malformed(what.to_string())
}

/// Finds the end of the head (just past CRLF CRLF) in `prev ++ input`, as an
/// offset into `input`. A bare LF anywhere is refused: Go and every sane
/// server send CRLF, and LF-only parsing differs between implementations.
fn find_head_end(prev: &[u8], input: &[u8]) -> Result<Option<usize>, ClientError> {
    let at = |i: usize| -> u8 {
        if i < prev.len() {
            prev[i]
        } else {
            input[i - prev.len()]
        }
    };
    for (i, &b) in input.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let pos = prev.len() + i;
        if pos == 0 || at(pos - 1) != b'\r' {
            return Err(malformed("bare LF in head"));
        }
        if pos >= 3 && at(pos - 2) == b'\n' && at(pos - 3) == b'\r' {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Digits only; a sign, a list or whitespace inside is refused.
fn parse_content_length(value: &[u8]) -> Result<u64, ClientError> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(malformed("content-length is not a decimal number"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests;
