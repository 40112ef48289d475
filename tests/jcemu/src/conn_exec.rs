//! An executor for hyper's HTTP/2 stream tasks that runs them inside the connection's own task.
//!
//! Why: hyper's HTTP/2 server hands every request stream to its executor as a separate future (it calls the
//! service, then queues the response HEADERS and DATA frames). With `TokioExecutor` that future is its own
//! tokio task, so on a multi-threaded runtime the connection task (which writes queued frames to the socket)
//! often runs on another core at the same moment and flushes a response's HEADERS frame on its own, a moment
//! before the same response's DATA/END_STREAM frame is queued. A client then sees the status before the
//! stream has ended; if it drops such a response without reading the body (reqwest does this when the caller
//! only looks at `status()`), its h2 stack sends RST_STREAM(CANCEL), and when the DATA frame arrives for a
//! stream it has already forgotten it answers RST_STREAM(STREAM_CLOSED). h2 counts those as locally caused
//! resets and, at 1024 per connection, gives up with GOAWAY ENHANCE_YOUR_CALM "too_many_internal_resets".
//!
//! Polling the stream tasks in the connection's task (never concurrently with the connection itself) means a
//! response's HEADERS and its body are always queued together; `ConnTasks::run` lets the connection write
//! them right after the task that queued them (h2 would otherwise interleave the frames of all ready
//! responses round-robin: every HEADERS first, then every body), and `coalesce` sends what was written in
//! one poll as one write. A response thus arrives with its END_STREAM, whatever the client does with it.
//! The request handlers themselves still run as their own tokio tasks (see `server::serve_io`), so requests
//! on one connection keep running in parallel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use parking_lot::Mutex;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls at most this many rounds of woken tasks per call before yielding back to the runtime.
const ROUNDS_PER_POLL: usize = 16;

#[derive(Default)]
struct Queue {
    /// Handed to the executor, not yet polled.
    spawned: Vec<Task>,
    /// Slots whose task was woken (may hold duplicates or stale slots: both only cause a spurious poll).
    woken: Vec<usize>,
    /// The connection task's waker.
    parent: Option<Waker>,
}

/// The `hyper::rt::Executor` given to the connection builder; the futures it receives are run by the
/// [`ConnTasks`] created from it.
#[derive(Clone, Default)]
pub struct ConnExecutor {
    queue: Arc<Mutex<Queue>>,
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let parent = {
            let mut q = self.queue.lock();
            q.spawned.push(Box::pin(fut));
            q.parent.clone()
        };
        if let Some(w) = parent {
            w.wake();
        }
    }
}

struct SlotWaker {
    slot: usize,
    queue: Arc<Mutex<Queue>>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let parent = {
            let mut q = self.queue.lock();
            q.woken.push(self.slot);
            q.parent.clone()
        };
        if let Some(w) = parent {
            w.wake();
        }
    }
}

/// The tasks of one connection. Dropping it drops (cancels) every task still running.
pub struct ConnTasks {
    queue: Arc<Mutex<Queue>>,
    slots: Vec<Option<(Task, Waker)>>,
    free: Vec<usize>,
}

impl ConnTasks {
    pub fn new(exec: &ConnExecutor) -> ConnTasks {
        ConnTasks {
            queue: exec.queue.clone(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Starts new tasks and polls woken ones, calling `after_each` after every task poll (the connection
    /// polls itself there, so it writes the frames that task queued before the next task queues more).
    /// Returns once no task is left to poll (or after a budget, having arranged to be polled again).
    pub fn run(&mut self, cx: &mut Context<'_>, mut after_each: impl FnMut(&mut Context<'_>)) {
        for _ in 0..ROUNDS_PER_POLL {
            let (spawned, woken) = {
                let mut q = self.queue.lock();
                if !q.parent.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    q.parent = Some(cx.waker().clone());
                }
                (std::mem::take(&mut q.spawned), std::mem::take(&mut q.woken))
            };
            if spawned.is_empty() && woken.is_empty() {
                return;
            }
            for task in spawned {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                let waker = Waker::from(Arc::new(SlotWaker {
                    slot,
                    queue: self.queue.clone(),
                }));
                self.slots[slot] = Some((task, waker));
                if self.poll_slot(slot) {
                    after_each(cx);
                }
            }
            for slot in woken {
                if self.poll_slot(slot) {
                    after_each(cx);
                }
            }
        }
        // still busy: let other tasks on this worker run, then come back
        cx.waker().wake_by_ref();
    }

    /// Polls the task in `slot`; false when there was none (finished, stale wake-up).
    fn poll_slot(&mut self, slot: usize) -> bool {
        let Some(Some((task, waker))) = self.slots.get_mut(slot) else {
            return false;
        };
        let mut cx = Context::from_waker(waker);
        if task.as_mut().poll(&mut cx).is_ready() {
            self.slots[slot] = None;
            self.free.push(slot);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    #[tokio::test]
    async fn runs_tasks_in_the_polling_task() {
        let exec = ConnExecutor::default();
        let mut tasks = ConnTasks::new(&exec);
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        for i in 0..3 {
            let done = done.clone();
            exec.execute(async move {
                tokio::task::yield_now().await;
                done.fetch_add(i, Ordering::SeqCst);
            });
        }
        {
            let done = done.clone();
            exec.execute(async move {
                let _ = rx.await;
                done.fetch_add(10, Ordering::SeqCst);
            });
        }
        let mut after = 0;
        {
            let run = std::future::poll_fn(|cx| {
                tasks.run(cx, |_| after += 1);
                Poll::<()>::Pending
            });
            tokio::pin!(run);
            let wait = std::time::Duration::from_millis(50);
            let _ = tokio::time::timeout(wait, run.as_mut()).await;
            assert_eq!(done.load(Ordering::SeqCst), 3);
            tx.send(()).unwrap();
            let _ = tokio::time::timeout(wait, run.as_mut()).await;
            assert_eq!(done.load(Ordering::SeqCst), 13);
        }
        assert!(after >= 4, "called after every task poll");
        assert!(tasks.slots.iter().all(Option::is_none));
        assert_eq!(tasks.free.len(), tasks.slots.len());
    }
}
