//! A small fixed thread pool for data-parallel loops: `run(f)` calls `f(0)` on the calling
//! thread and `f(1)` ... `f(threads - 1)` on persistent workers, and returns when all are done.
//! A dispatch allocates nothing, and a pool of one thread spawns nothing.
//!
//! Workers spin briefly on an atomic generation counter before sleeping on a condition
//! variable, so the back-to-back dispatches of a forward pass (one per layer) cost no system
//! call, and an idle pool costs no CPU.
//!
//! The pool is crate-private. One dispatch runs at a time: `run` holds the dispatch lock for
//! its whole duration, and a call that finds the lock taken (another thread's dispatch, or a
//! job dispatching again from inside itself) runs every index itself, in order, on its own
//! thread, so the one job slot is never shared and no closure outlives its `run`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, TryLockError};

use crate::error::Result;
use std::thread::JoinHandle;

type Job = dyn Fn(usize) + Sync;

/// Spins (about 50-100 us) before a waiting thread goes to sleep.
const SPINS: u32 = 20_000;

/// A job pointer with its lifetime erased; only dereferenced between a dispatch and its
/// completion, while `run` keeps the real borrow alive.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointee is `Sync` and outlives every use (see `ThreadPool::run`).
unsafe impl Send for JobPtr {}

struct Shared {
    job: Mutex<Option<JobPtr>>,
    generation: AtomicU64,
    pending: AtomicUsize,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// A pool of `threads - 1` worker threads plus the caller.
pub(crate) struct ThreadPool {
    threads: usize,
    /// Held by the one dispatch under way.
    dispatch: Mutex<()>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("threads", &self.threads).finish()
    }
}

impl ThreadPool {
    /// A pool running loops on `threads` threads (1 spawns nothing; 0 means every core
    /// `std::thread::available_parallelism` reports).
    pub fn new(threads: usize) -> crate::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = ThreadPool {
            threads,
            dispatch: Mutex::new(()),
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
        let _dispatching = match self.dispatch.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Another dispatch is under way: the workers are not ours to use.
                (0..self.threads).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY (lifetime erasure): the pointer is cleared below before this function returns,
        // and workers only use it until they decrement `pending`, which this function waits out.
        let erased: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        *s.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(JobPtr(erased));
        s.panicked.store(false, Ordering::Relaxed);
        s.pending.store(self.threads - 1, Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        {
            let _guard = s.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) > 0 {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *s.job.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if let Err(p) = mine {
            panic::resume_unwind(p);
        }
        if s.panicked.load(Ordering::Acquire) {
            panic!("a convnet worker thread panicked");
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let guard = s.sleep.lock().unwrap_or_else(PoisonError::into_inner);
                if s.generation.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire) {
                    drop(s.wake.wait(guard).unwrap_or_else(PoisonError::into_inner));
                }
            }
        }
        let job = *s.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(JobPtr(job)) = job {
            // SAFETY: `run` keeps the job alive until `pending` reaches zero.
            let ok = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_ok();
            if !ok {
                s.panicked.store(true, Ordering::Release);
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _guard = self.shared.sleep.lock().unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// An output pointer shared by the threads of one dispatch, each writing its own disjoint
/// block through it.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: threads write disjoint blocks through it (each user documents its split).
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(t)` on every thread of the pool and returns the first error any of them reported.
pub(crate) fn parallel(pool: &ThreadPool, f: &(dyn Fn(usize) -> Result<()> + Sync)) -> Result<()> {
    let failed = Mutex::new(None);
    pool.run(&|t| {
        if let Err(e) = f(t) {
            *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
        }
    });
    failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .map_or(Ok(()), Err)
}

/// `[total * t / n, total * (t + 1) / n)`: thread `t`'s share of `total` items.
pub(crate) fn share(total: usize, t: usize, n: usize) -> std::ops::Range<usize> {
    total * t / n..total * (t + 1) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_dispatch() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for round in 0..200 {
                if round == 100 {
                    // let the workers fall asleep once
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 200));
        }
    }

    /// Two threads dispatching on one pool at once: before the dispatch lock, they shared the
    /// one job slot, and some indices ran twice or not at all (8 of 4000 dispatches).
    #[test]
    fn concurrent_dispatches_each_run_every_index_exactly_once() {
        let pool = ThreadPool::new(2).unwrap();
        let wrong = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for _ in 0..4000 {
                        let hits = [AtomicUsize::new(0), AtomicUsize::new(0)];
                        pool.run(&|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                        if hits.iter().any(|h| h.load(Ordering::Relaxed) != 1) {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(wrong.load(Ordering::Relaxed), 0);
    }

    /// What a dispatch costs, against spawning scoped threads per dispatch (the sound
    /// alternative without a pool): `cargo test --release --lib dispatch_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn dispatch_cost() {
        let pool = ThreadPool::new(2).unwrap();
        let n = 20_000;
        let hits = AtomicUsize::new(0);
        let t = std::time::Instant::now();
        for _ in 0..n {
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        let pooled = t.elapsed().as_secs_f64() / n as f64;
        let t = std::time::Instant::now();
        for _ in 0..n / 10 {
            std::thread::scope(|s| {
                s.spawn(|| hits.fetch_add(1, Ordering::Relaxed));
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        let scoped = t.elapsed().as_secs_f64() / (n / 10) as f64;
        println!("pool dispatch {:.2} us, scoped spawn {:.2} us", pooled * 1e6, scoped * 1e6);
    }

    #[test]
    fn a_job_that_dispatches_again_runs_the_inner_job_itself() {
        let pool = ThreadPool::new(2).unwrap();
        let inner = AtomicUsize::new(0);
        pool.run(&|_| {
            pool.run(&|_| {
                inner.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(inner.load(Ordering::Relaxed), 4);
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
