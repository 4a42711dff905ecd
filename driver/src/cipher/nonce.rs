//! Random nonces and ids from the operating system CSPRNG, drawn in batches per thread.
//!
//! A content write seals one nonce per 4 KiB block, so asking the kernel for 12 bytes each time
//! would cost a system call per block. Each thread instead keeps a small pool filled by one
//! `getrandom` call and hands out fresh, never reused slices of it. The bytes are as random as
//! the kernel's; the only hazard is `fork()` without `exec` duplicating a pool, which this process
//! never does while serving (child processes are spawned with an immediate `exec`).

use std::cell::RefCell;

use super::CipherError;

/// Enough for 341 nonces per refill.
const POOL_LEN: usize = 4092;

struct Pool {
    buf: [u8; POOL_LEN],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { buf: [0; POOL_LEN], used: POOL_LEN }) };
}

/// Fills `out` with bytes from the OS CSPRNG. Bytes handed out are wiped from the pool so no two
/// calls, on any thread, can return the same bytes.
pub fn random_bytes(out: &mut [u8]) -> Result<(), CipherError> {
    if out.len() > POOL_LEN / 4 {
        return getrandom::fill(out).map_err(CipherError::Random);
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if POOL_LEN - pool.used < out.len() {
            getrandom::fill(&mut pool.buf).map_err(CipherError::Random)?;
            pool.used = 0;
        }
        let start = pool.used;
        let taken = &mut pool.buf[start..start + out.len()];
        out.copy_from_slice(taken);
        taken.fill(0);
        pool.used += out.len();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn nonces_do_not_repeat_across_refills() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let mut nonce = [0u8; 12];
            random_bytes(&mut nonce).unwrap();
            assert!(seen.insert(nonce), "a nonce repeated");
        }
    }

    #[test]
    fn large_requests_bypass_the_pool() {
        let mut big = [0u8; 2048];
        random_bytes(&mut big).unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }
}
