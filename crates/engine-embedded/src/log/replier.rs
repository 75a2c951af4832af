//! Answers committed appends off the writer threads.
//!
//! Waking a tokio task from a plain thread costs about a microsecond (a
//! scheduler queue push, often a futex wake). Done by the writer, hundreds of
//! wakes per group would stretch every commit cycle; handed to this thread,
//! they overlap with the writer's next write and fsync, so the next group is
//! larger and throughput under many publishers is much higher.
//!
//! One thread serves every log and the journal of the process: it only does
//! wakes, far below the rate at which it would become the bottleneck.

use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;

use tokio::sync::oneshot;

type Batch = Box<dyn FnOnce() + Send>;

fn queue() -> &'static Sender<Batch> {
    static QUEUE: OnceLock<Sender<Batch>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Batch>();
        std::thread::Builder::new()
            .name("courier-replier".into())
            .spawn(move || {
                while let Ok(batch) = rx.recv() {
                    batch();
                }
            })
            .expect("spawning the replier thread");
        tx
    })
}

/// Sends every reply of a committed group, in order, from the replier thread.
pub(crate) fn answer<T: Send + 'static>(replies: Vec<(oneshot::Sender<T>, T)>) {
    if replies.is_empty() {
        return;
    }
    // The receiver lives in a thread that never exits, so this cannot fail.
    let _ = queue().send(Box::new(move || {
        for (reply, value) in replies {
            let _ = reply.send(value);
        }
    }));
}
