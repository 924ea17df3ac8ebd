//! Task output, shipped by agents and kept in memory by the manager (the last
//! [`KEPT_BYTES`] of each task), for `netctl service logs`. Chunks carry their
//! offset in the task's log file, so a chunk sent twice (after a reconnect)
//! is not stored twice.

use std::collections::HashMap;
use std::sync::Mutex;

/// How much of each task's output is kept.
pub const KEPT_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct TaskOutput {
    /// Bytes of the log file received so far (the file offset of the end).
    received: u64,
    /// The last bytes of the output.
    tail: Vec<u8>,
}

/// The output of every task, by task ID.
#[derive(Debug, Default)]
pub struct Logs {
    tasks: Mutex<HashMap<String, TaskOutput>>,
}

impl Logs {
    /// Adds the bytes of `task_id`'s log file from `offset` on.
    pub fn append(&self, task_id: &str, offset: u64, data: &[u8]) {
        let mut tasks = self.tasks.lock().expect("log table poisoned");
        let output = tasks.entry(task_id.to_string()).or_default();
        let end = offset + data.len() as u64;
        if end <= output.received {
            return;
        }
        let skip = output.received.saturating_sub(offset) as usize;
        output.tail.extend_from_slice(&data[skip..]);
        output.received = end;
        if output.tail.len() > KEPT_BYTES {
            let excess = output.tail.len() - KEPT_BYTES;
            output.tail.drain(..excess);
        }
    }

    /// What `task_id` wrote, as far as it is kept.
    pub fn output(&self, task_id: &str) -> Vec<u8> {
        let tasks = self.tasks.lock().expect("log table poisoned");
        tasks.get(task_id).map(|o| o.tail.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_sent_twice_are_kept_once() {
        let logs = Logs::default();
        logs.append("t", 0, b"hello\n");
        logs.append("t", 0, b"hello\nworld\n");
        logs.append("t", 6, b"world\n");
        assert_eq!(logs.output("t"), b"hello\nworld\n");
        assert!(logs.output("other").is_empty());
    }

    #[test]
    fn only_the_tail_is_kept() {
        let logs = Logs::default();
        logs.append("t", 0, &vec![b'a'; KEPT_BYTES]);
        logs.append("t", KEPT_BYTES as u64, b"end");
        let output = logs.output("t");
        assert_eq!(output.len(), KEPT_BYTES);
        assert!(output.ends_with(b"aend"));
    }
}
