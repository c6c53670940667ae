//! The thread pool kept awake for a loop of steps. A training step opens thousands of parallel regions (every
//! product, every element-wise pass), with short stretches of one thread's work between them. Rayon puts a thread
//! that finds no work to sleep after a few dozen rounds of looking, and the next region must wake it again: a system
//! call on one side and a delay on the other. OpenMP runtimes (PyTorch's, MKL's) keep their threads spinning between
//! regions for the same reason. `loft bench train` (4×256, 2 threads, AMD EPYC VM): context switches 14,059 → 3,270
//! over the run, 20–70 ms less a step (1.6 s), interleaved runs. Decoding gained nothing measurable (its regions
//! follow each other closely enough that the threads seldom sleep), so it does not use it.
//!
//! [`HotPool::start`], called on a thread of the pool, puts one spinning task on each other thread: it runs whatever
//! work is pending (rayon's `yield_now`) and otherwise spins, until the guard is dropped. The caller's thread runs no
//! spinner (one that lands there returns at once), so whatever it waits on, it can still run the work it waits for.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

thread_local! {
    /// This thread already runs a spinner (a second one, reached through `yield_now`, returns at once).
    static SPINNING: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, the pool's other threads spin between parallel regions instead of sleeping.
pub struct HotPool {
    stop: Arc<AtomicBool>,
    /// Spinners started and not yet returned (queued ones included).
    pending: Arc<AtomicUsize>,
}

impl HotPool {
    /// Starts a spinner for each thread of the current pool but this one. Outside a pool, or in a pool of one
    /// thread, it starts none.
    pub fn start() -> HotPool {
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        if let Some(me) = rayon::current_thread_index() {
            for _ in 1..rayon::current_num_threads() {
                pending.fetch_add(1, Ordering::AcqRel);
                let (stop, pending) = (stop.clone(), pending.clone());
                rayon::spawn(move || {
                    if rayon::current_thread_index() != Some(me) && !SPINNING.with(|s| s.replace(true)) {
                        while !stop.load(Ordering::Acquire) {
                            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                                std::hint::spin_loop();
                            }
                        }
                        SPINNING.with(|s| s.set(false));
                    }
                    pending.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
        HotPool { stop, pending }
    }

    /// Spinners started and not yet returned.
    pub fn spinners(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

impl Drop for HotPool {
    /// Stops the spinners and waits until each has returned, so that none outlives the loop. One still queued is
    /// run here (it returns at once on this thread).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        while self.pending.load(Ordering::Acquire) > 0 {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    #[test]
    fn parallel_work_runs_beside_the_spinners_and_every_spinner_returns() {
        for threads in [1, 2, 4] {
            pool(threads).install(|| {
                let hot = HotPool::start();
                // Regions opened while the other threads spin still split and finish, joins nested in them too.
                for round in 0..200u64 {
                    let sum: u64 = (0..10_000u64).into_par_iter().map(|i| i * round).sum();
                    assert_eq!(sum, round * 10_000 * 9_999 / 2);
                    let (a, b) = rayon::join(|| round + 1, || round + 2);
                    assert_eq!(a + b, 2 * round + 3);
                }
                let pending = Arc::clone(&hot.pending);
                drop(hot);
                assert_eq!(pending.load(Ordering::Acquire), 0, "{threads} threads: a spinner outlived its guard");
            });
        }
    }

    #[test]
    fn outside_a_pool_it_starts_nothing() {
        let hot = HotPool::start();
        assert_eq!(hot.spinners(), 0);
    }

    #[test]
    fn the_work_is_shared_by_the_threads_while_they_spin() {
        pool(2).install(|| {
            let _hot = HotPool::start();
            // Some of the tasks run on the other thread: its spinner takes them from this thread's queue.
            let threads: std::collections::BTreeSet<usize> = (0..64)
                .into_par_iter()
                .with_max_len(1)
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    rayon::current_thread_index().unwrap()
                })
                .collect();
            assert_eq!(threads.len(), 2, "all 64 tasks ran on one thread");
        });
    }
}
