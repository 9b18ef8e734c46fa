//! A small fixed thread pool for data-parallel loops: `run(f)` calls `f(0)` on the calling
//! thread and `f(1)` ... `f(threads - 1)` on persistent workers, and returns when all are done.
//! A dispatch allocates nothing, and a pool of one thread spawns nothing.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

type Job = dyn Fn(usize) + Sync;

struct State {
    generation: u64,
    /// The current job, with its lifetime erased; only dereferenced between a dispatch and its
    /// completion, while `run` keeps the real borrow alive.
    job: Option<*const Job>,
    pending: usize,
    panicked: bool,
    shutdown: bool,
}

// SAFETY: the raw job pointer is only used while `run` blocks on its completion, and the job
// itself is `Sync`.
unsafe impl Send for State {}

struct Shared {
    state: Mutex<State>,
    start: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pool of `threads - 1` worker threads plus the caller.
pub struct ThreadPool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("threads", &self.threads).finish()
    }
}

impl ThreadPool {
    /// A pool running loops on `threads` threads (at least 1; 1 spawns nothing).
    pub fn new(threads: usize) -> crate::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                pending: 0,
                panicked: false,
                shutdown: false,
            }),
            start: Condvar::new(),
            done: Condvar::new(),
        });
        let mut pool = ThreadPool {
            threads,
            shared,
            workers: Vec::new(),
        };
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("convnet-{index}"))
                .spawn(move || worker(&shared, index))
                .map_err(|e| crate::Error::io("spawning an inference thread", e))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads that run a loop (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` for every `i` in `0..threads`, `f(0)` on the calling thread, and returns when
    /// all calls have returned. A panic in any call is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        {
            let mut s = self.shared.lock();
            // SAFETY (lifetime erasure): the pointer is cleared below before this function
            // returns, and workers only use it while `pending > 0`, which this function waits out.
            let erased: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
            s.job = Some(erased);
            s.pending = self.threads - 1;
            s.panicked = false;
            s.generation += 1;
        }
        self.shared.start.notify_all();
        let mine = panic::catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut s = self.shared.lock();
        while s.pending > 0 {
            s = self.shared.done.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.job = None;
        let theirs = s.panicked;
        drop(s);
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        if theirs {
            panic!("a convnet worker thread panicked");
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let job = {
            let mut s = shared.lock();
            while s.generation == seen && !s.shutdown {
                s = shared.start.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.shutdown {
                return;
            }
            seen = s.generation;
            s.job
        };
        let ok = match job {
            // SAFETY: `run` keeps the job alive until `pending` reaches zero.
            Some(job) => panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_ok(),
            None => true,
        };
        let mut s = shared.lock();
        s.panicked |= !ok;
        s.pending -= 1;
        if s.pending == 0 {
            shared.done.notify_one();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.start.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_index_runs_once_per_dispatch() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..100 {
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 100));
        }
    }

    #[test]
    fn a_panicking_job_is_reraised_and_the_pool_survives() {
        let pool = ThreadPool::new(2).unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| pool.run(&|i| assert!(i == 0, "worker fails"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
