//! Session ids: which worker owns a session, and 128 bits of the kernel's
//! randomness so nobody can guess one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A new session id owned by `worker`: 4 hex digits, then 32 hex digits of
/// randomness from the kernel. Fails only if the kernel gives no randomness
/// (the request that wanted a session gets 503; the worker serves on).
pub fn new_session_id(worker: usize) -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    fill_random(&mut bytes)?;
    let mut id = format!("{:04x}", worker & 0xffff);
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The worker that owns a session id, if the id is well formed.
pub fn owner_of(id: &str) -> Option<usize> {
    if id.len() != 36
        || !id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    usize::from_str_radix(&id[..4], 16).ok()
}

/// Waits until fewer than `max` children are alive (an evicted session's
/// child has exited and freed its slot), for at most `limit`.
pub(super) async fn wait_below(live: &AtomicUsize, max: usize, limit: Duration) {
    let until = Instant::now() + limit;
    while live.load(Ordering::Acquire) >= max && Instant::now() < until {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_owner_and_are_random() {
        let a = new_session_id(3).unwrap();
        let b = new_session_id(3).unwrap();
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
        assert_eq!(owner_of(&a), Some(3));
        assert_eq!(owner_of("0003"), None);
        assert_eq!(owner_of(&a.to_uppercase()), None);
        assert!(a.bytes().all(|c| c.is_ascii_graphic()));
    }
}
