//! `serve`'s poll scheduler: one entry per instance in a timer queue, and a bounded pool of
//! worker threads that take the instances that are due and run one turn of each (start
//! it if need be, poll it, commit, deliver; see `serve`'s `InstanceJob`).
//!
//! An instance between polls is an entry in the queue and its job's small state (its claim,
//! its output, its schedule); no thread, store or linear memory. A tenant whose Graph calls
//! hang holds one worker until its HTTP timeout, never the queue: the other workers go on
//! taking due instances, oldest due first.
//!
//! Many hanging tenants at once (a tenth of them, say, behind a Graph region that stalls)
//! could still hold every worker. So an instance whose last turn took longer than
//! [`SLOW_TURN`] waits in a second queue, and at most half the workers run such instances
//! at a time: the other half always serve the instances that answer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a worker runs for an instance.
pub trait Job: Send {
    /// One turn: a bounded amount of work, then when the instance is due again.
    fn turn(&mut self) -> Turn;
    /// The turn panicked (a host bug): the job decides how to go on from a clean state.
    fn after_panic(&mut self, what: String) -> Turn;
}

/// When an instance is due again.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    After(Duration),
    /// Nothing more to do until the instance is replaced (a refused config).
    Done,
}

pub struct Scheduler {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    slow_turn: Duration,
    inner: Mutex<Inner>,
    /// A new entry, an earlier due time or shutdown: the waiting workers look again.
    wake: Condvar,
    /// A turn ended: `remove` waits on this for the turn of the instance it removes.
    turn_ended: Condvar,
}

/// A turn this long marks its instance slow (see the module's comment). A healthy turn
/// (up to [`crate::serve`]'s eight polls of a backfill) takes well under it on real Graph;
/// one that waits out HTTP timeouts takes longer.
pub const SLOW_TURN: Duration = Duration::from_secs(10);

/// (due, generation, name); entries whose generation is no longer the instance's are
/// skipped (a removed or replaced instance), so removal need not search the heap.
type Queue = BinaryHeap<Reverse<(Instant, u64, String)>>;

#[derive(Default)]
struct Inner {
    queue: Queue,
    /// Instances whose last turn was slow.
    slow: Queue,
    /// Workers running a slow instance's turn now, and the most that may.
    slow_running: usize,
    slow_cap: usize,
    entries: HashMap<String, Entry>,
    next_generation: u64,
    shutdown: bool,
}

struct Entry {
    generation: u64,
    /// `None` while a worker runs its turn, or once it is done.
    job: Option<Box<dyn Job>>,
    running: bool,
}

impl Scheduler {
    /// A pool of `workers` threads (at least one).
    pub fn new(workers: usize) -> std::io::Result<Scheduler> {
        Self::with_slow_turn(workers, SLOW_TURN)
    }

    /// A pool whose turns of `slow_turn` or longer mark an instance slow.
    pub fn with_slow_turn(workers: usize, slow_turn: Duration) -> std::io::Result<Scheduler> {
        let shared = Arc::new(Shared {
            slow_turn,
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
            turn_ended: Condvar::new(),
        });
        let mut handles = Vec::new();
        for n in 0..workers.max(1) {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("poll worker {n}"))
                .spawn(move || work(&shared));
            match handle {
                Ok(h) => handles.push(h),
                // Fewer workers than asked still serve every instance, only slower.
                Err(e) if !handles.is_empty() => {
                    tracing::error!(
                        "cannot start poll worker {n}: {e}; serving with {}",
                        handles.len()
                    );
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // Half, so that one worker at least always serves the instances that answer.
        shared.lock().slow_cap = (handles.len() / 2).max(1);
        Ok(Scheduler {
            shared,
            workers: handles,
        })
    }

    /// How many workers run (fewer than asked if the system refused threads).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Adds an instance, first due after `first` (jitter: instances started together do
    /// not all poll at once). An instance of the same name is replaced.
    pub fn add(&self, name: &str, job: Box<dyn Job>, first: Duration) {
        let old = self.remove(name);
        drop(old);
        let mut inner = self.shared.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        inner.entries.insert(
            name.to_string(),
            Entry {
                generation,
                job: Some(job),
                running: false,
            },
        );
        inner.queue.push(Reverse((
            Instant::now() + first,
            generation,
            name.to_string(),
        )));
        drop(inner);
        self.shared.wake.notify_one();
    }

    /// Removes an instance after its turn in flight, if one is, and returns its job (to
    /// drop outside the lock: dropping a runner releases its claim in the state file).
    pub fn remove(&self, name: &str) -> Option<Box<dyn Job>> {
        let mut inner = self.shared.lock();
        while inner.entries.get(name).is_some_and(|e| e.running) {
            inner = self
                .shared
                .turn_ended
                .wait(inner)
                .unwrap_or_else(|p| p.into_inner());
        }
        inner.entries.remove(name).and_then(|e| e.job)
    }

    /// How many instances are in the scheduler.
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets the turns in flight finish, stops the workers and hands every job back: the
    /// caller may settle for all of them at once (release every claim in one write)
    /// before they drop.
    #[must_use = "dropping the jobs stops them; serve releases their claims first"]
    pub fn shutdown(mut self) -> Vec<Box<dyn Job>> {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for worker in self.workers.drain(..) {
            if worker.join().is_err() {
                tracing::error!("a poll worker panicked outside a turn");
            }
        }
        let entries: Vec<_> = self.shared.lock().entries.drain().collect();
        entries.into_iter().filter_map(|(_, e)| e.job).collect()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker: takes the instance due first, runs its turn, queues it again.
fn work(shared: &Shared) {
    loop {
        let Some((name, generation, mut job, took_slow)) = next_due(shared) else {
            return;
        };
        let started = Instant::now();
        let turn = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.turn())) {
            Ok(turn) => turn,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                job.after_panic(what)
            }
        };
        let slow = started.elapsed() >= shared.slow_turn;
        let mut inner = shared.lock();
        let inner = &mut *inner;
        if took_slow {
            inner.slow_running -= 1;
        }
        if let Some(entry) = inner
            .entries
            .get_mut(&name)
            .filter(|e| e.generation == generation)
        {
            entry.running = false;
            if let Turn::After(wait) = turn {
                entry.job = Some(job);
                let queue = if slow {
                    &mut inner.slow
                } else {
                    &mut inner.queue
                };
                queue.push(Reverse((Instant::now() + wait, generation, name)));
            }
        }
        // A slow turn that ended frees room for another: every waiting worker looks again.
        shared.wake.notify_all();
        shared.turn_ended.notify_all();
    }
}

/// Waits for the next due instance and takes its job, and whether it came from the slow
/// queue; `None` at shutdown. The instance due first goes first, except that a slow one
/// waits while [`Inner::slow_cap`] workers run slow ones.
fn next_due(shared: &Shared) -> Option<(String, u64, Box<dyn Job>, bool)> {
    let mut inner = shared.lock();
    loop {
        if inner.shutdown {
            return None;
        }
        let slow_allowed = inner.slow_running < inner.slow_cap;
        let fast = live_head(&mut inner, false);
        let slow = live_head(&mut inner, true);
        let candidate = match (fast, slow.filter(|_| slow_allowed)) {
            (Some(f), Some(s)) if s.0 < f.0 => Some((s, true)),
            (Some(f), _) => Some((f, false)),
            (None, Some(s)) => Some((s, true)),
            (None, None) => None,
        };
        let Some(((due, generation, name), from_slow)) = candidate else {
            inner = shared.wake.wait(inner).unwrap_or_else(|p| p.into_inner());
            continue;
        };
        let now = Instant::now();
        if due > now {
            inner = shared
                .wake
                .wait_timeout(inner, due - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        if from_slow {
            inner.slow.pop();
            inner.slow_running += 1;
        } else {
            inner.queue.pop();
        }
        let entry = inner.entries.get_mut(&name).expect("checked live");
        entry.running = true;
        let job = entry.job.take().expect("checked live");
        return Some((name, generation, job, from_slow));
    }
}

/// The first live entry of one queue, dropping dead ones (removed or replaced instances)
/// on the way.
fn live_head(inner: &mut Inner, slow: bool) -> Option<(Instant, u64, String)> {
    loop {
        let queue = if slow { &inner.slow } else { &inner.queue };
        let Reverse(head) = queue.peek().cloned()?;
        let live = inner
            .entries
            .get(&head.2)
            .is_some_and(|e| e.generation == head.1 && e.job.is_some());
        if live {
            return Some(head);
        }
        if slow {
            inner.slow.pop();
        } else {
            inner.queue.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        turns: Arc<AtomicUsize>,
        panics: Arc<AtomicUsize>,
        hang: Option<Duration>,
        panic_first: bool,
    }

    impl Job for Counting {
        fn turn(&mut self) -> Turn {
            self.turns.fetch_add(1, Ordering::SeqCst);
            if std::mem::take(&mut self.panic_first) {
                panic!("boom");
            }
            if let Some(h) = self.hang {
                std::thread::sleep(h);
            }
            Turn::After(Duration::from_millis(5))
        }
        fn after_panic(&mut self, what: String) -> Turn {
            assert_eq!(what, "boom");
            self.panics.fetch_add(1, Ordering::SeqCst);
            Turn::After(Duration::ZERO)
        }
    }

    fn job(hang: Option<Duration>, panic_first: bool) -> (Box<Counting>, Arc<AtomicUsize>) {
        let turns = Arc::new(AtomicUsize::new(0));
        let job = Box::new(Counting {
            turns: turns.clone(),
            panics: Arc::new(AtomicUsize::new(0)),
            hang,
            panic_first,
        });
        (job, turns)
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn a_hanging_instance_holds_one_worker_and_the_others_go_on() {
        let scheduler = Scheduler::new(2).unwrap();
        let (hanging, hung) = job(Some(Duration::from_secs(3600)), false);
        let (quick, quick_turns) = job(None, false);
        scheduler.add("hangs", hanging, Duration::ZERO);
        wait_for("the hanging turn", || hung.load(Ordering::SeqCst) == 1);
        scheduler.add("quick", quick, Duration::ZERO);
        wait_for("turns of the quick instance", || {
            quick_turns.load(Ordering::SeqCst) >= 5
        });
        // (The hanging worker is left behind: the test process ends with it.)
        std::mem::forget(scheduler);
    }

    #[test]
    fn slow_instances_get_half_the_workers_and_the_others_keep_their_pace() {
        use std::sync::atomic::AtomicIsize;
        struct Slow {
            now: Arc<AtomicIsize>,
            most: Arc<AtomicIsize>,
        }
        impl Job for Slow {
            fn turn(&mut self) -> Turn {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                self.now.fetch_sub(1, Ordering::SeqCst);
                Turn::After(Duration::from_millis(5))
            }
            fn after_panic(&mut self, _: String) -> Turn {
                Turn::Done
            }
        }
        let scheduler = Scheduler::with_slow_turn(4, Duration::from_millis(100)).unwrap();
        let (now, most) = (Arc::new(AtomicIsize::new(0)), Arc::new(AtomicIsize::new(0)));
        for n in 0..10 {
            let job = Slow {
                now: now.clone(),
                most: most.clone(),
            };
            scheduler.add(&format!("slow-{n}"), Box::new(job), Duration::ZERO);
        }
        // Every slow instance's first turn (unknown until then, so on any worker).
        std::thread::sleep(Duration::from_millis(1500));
        most.store(0, Ordering::SeqCst);
        let (quick, quick_turns) = job(None, false);
        scheduler.add("quick", quick, Duration::ZERO);
        std::thread::sleep(Duration::from_secs(1));
        let turns = quick_turns.load(Ordering::SeqCst);
        // Two free workers take it every 5 ms; with every worker on slow turns it would
        // wait for one to end, about 75 ms apart.
        assert!(turns >= 60, "the quick instance had {turns} turns in 1 s");
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "half the workers run slow turns"
        );
        drop(scheduler.shutdown());
    }

    #[test]
    fn a_panicking_turn_is_recovered_and_the_instance_keeps_its_turns() {
        let scheduler = Scheduler::new(1).unwrap();
        let (j, turns) = job(None, true);
        let panics = j.panics.clone();
        scheduler.add("p", j, Duration::ZERO);
        wait_for("turns after the panic", || {
            turns.load(Ordering::SeqCst) >= 3
        });
        assert_eq!(panics.load(Ordering::SeqCst), 1);
        assert!(scheduler.remove("p").is_some());
        assert!(scheduler.is_empty());
        let after = turns.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(turns.load(Ordering::SeqCst), after, "no turn after removal");
        drop(scheduler.shutdown());
    }
}
