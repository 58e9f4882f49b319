//! The ceiling for scenarios 1 and 2: the least an HTTP/1.1 server on the
//! same stack can do. monoio on io_uring with the same ring set-up as
//! ringgate's workers (1024 entries, `COOP_TASKRUN`), one thread per worker
//! with its own `SO_REUSEPORT` listener, keep-alive, each request head
//! parsed with httparse into 64 header slots (ringgate's default limit), and
//! one fixed response. No routing, no policy, no date, no log.
//!
//! It runs as a separate process (this executable with `ROLE_ENV` set), so
//! its CPU time and memory are measured the same way as ringgate's. It
//! prints `listening ADDR` on stdout, then serves until killed.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

pub const WORKERS_ENV: &str = "RINGGATE_BENCH_WORKERS";
/// The same body as the bench config's `directResponse`.
pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\nhello from ringgate\n";
const URING_ENTRIES: u32 = 1024;
const READ_BYTES: usize = 4096;
const MAX_HEADERS: usize = 64;

pub fn main() {
    let workers: usize = std::env::var(WORKERS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..workers {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(4096).unwrap();
        let l: std::net::TcpListener = s.into();
        addr = l.local_addr().unwrap();
        listeners.push(l);
    }
    println!("listening {addr}");
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || worker(l)))
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn worker(l: std::net::TcpListener) {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun();
    let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .build();
    match rt {
        Ok(mut rt) => rt.block_on(accept(l)),
        Err(_) => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("epoll runtime")
            .block_on(accept(l)),
    }
}

async fn accept(l: std::net::TcpListener) {
    let l = TcpListener::from_std(l).expect("listener");
    while let Ok((s, _)) = l.accept().await {
        let _ = s.set_nodelay(true);
        monoio::spawn(serve(s));
    }
}

async fn serve(mut s: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // Answer every complete head buffered (pipelining included).
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    out.extend_from_slice(RESPONSE);
                    buf.drain(..n);
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            let (r, o) = s.write_all(out).await;
            if r.is_err() {
                return;
            }
            out = o;
            out.clear();
        }
        if buf.capacity() - buf.len() < READ_BYTES / 2 {
            buf.reserve(READ_BYTES);
        }
        let len = buf.len();
        let (r, slice) = s.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
