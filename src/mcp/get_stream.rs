//! A session's server-to-client stream (the client's GET): events go to it
//! while it is open, and wait in a bounded backlog while none is; what does
//! not fit is dropped and counted, never held without bound.

use std::collections::VecDeque;

pub struct GetStream {
    tx: Option<flume::Sender<Vec<u8>>>,
    backlog: VecDeque<Vec<u8>>,
    max: usize,
    /// Events dropped: the stream was full, or the backlog was.
    overflow: u64,
}

impl GetStream {
    pub fn new(max: usize) -> GetStream {
        GetStream {
            tx: None,
            backlog: VecDeque::new(),
            max,
            overflow: 0,
        }
    }

    /// Opens (or replaces) the stream and hands it the backlog.
    pub fn open(&mut self) -> flume::Receiver<Vec<u8>> {
        let (tx, rx) = flume::bounded(self.max);
        while let Some(ev) = self.backlog.pop_front() {
            let _ = tx.try_send(ev);
        }
        self.tx = Some(tx);
        rx
    }

    /// Whether a client holds the stream open.
    pub fn is_open(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| !tx.is_disconnected())
    }

    pub fn close(&mut self) {
        self.tx = None;
    }

    /// Closes the stream and forgets the backlog (the session ended).
    pub fn clear(&mut self) {
        self.tx = None;
        self.backlog.clear();
    }

    pub fn send(&mut self, event: Vec<u8>) {
        let Some(tx) = &self.tx else {
            return self.push(event);
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => self.overflow += 1,
            Err(flume::TrySendError::Disconnected(ev)) => {
                self.tx = None;
                self.push(ev);
            }
        }
    }

    #[cfg(test)]
    fn overflow(&self) -> u64 {
        self.overflow
    }

    fn push(&mut self, event: Vec<u8>) {
        if self.backlog.len() >= self.max {
            self.backlog.pop_front();
            self.overflow += 1;
        }
        self.backlog.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u8) -> Vec<u8> {
        vec![n]
    }

    #[test]
    fn backlog_is_bounded_and_replayed_in_order_on_open() {
        let mut g = GetStream::new(2);
        assert!(!g.is_open());
        for n in 1..=3 {
            g.send(ev(n));
        }
        assert_eq!(g.overflow(), 1, "the oldest event made room");
        let rx = g.open();
        assert!(g.is_open());
        assert_eq!(rx.try_recv().unwrap(), ev(2));
        assert_eq!(rx.try_recv().unwrap(), ev(3));
        g.send(ev(4));
        assert_eq!(rx.try_recv().unwrap(), ev(4));
    }

    #[test]
    fn a_full_stream_drops_and_a_gone_client_sends_to_the_backlog() {
        let mut g = GetStream::new(1);
        let rx = g.open();
        g.send(ev(1));
        g.send(ev(2));
        assert_eq!(g.overflow(), 1, "the stream held one");
        drop(rx);
        assert!(!g.is_open());
        g.send(ev(3));
        let rx = g.open();
        assert_eq!(rx.try_recv().unwrap(), ev(3));
        g.clear();
        assert!(!g.is_open());
    }
}
