//! Task output, shipped by agents and kept in memory by the manager (the last
//! [`KEPT_BYTES`] of each task, for tasks that still exist), for `netctl
//! service logs`. Chunks carry their offset in the task's whole output, so a
//! chunk sent twice (after a reconnect) is not stored twice, and an agent
//! asks [`Logs::received`] where to go on from.

use std::collections::HashMap;
use std::sync::Mutex;

/// How much of each task's output is kept.
pub const KEPT_BYTES: usize = 256 * 1024;

#[derive(Debug, Default)]
struct TaskOutput {
    /// Bytes of the task's output received so far (the offset of the end).
    received: u64,
    /// The last bytes of the output: offsets `received - tail.len()` on.
    tail: Vec<u8>,
}

impl TaskOutput {
    fn start(&self) -> u64 {
        self.received - self.tail.len() as u64
    }
}

/// The output of every task, by task ID.
#[derive(Debug)]
pub struct Logs {
    tasks: Mutex<HashMap<String, TaskOutput>>,
    /// Bumped on every append, for readers that follow.
    appended: tokio::sync::watch::Sender<u64>,
}

impl Default for Logs {
    fn default() -> Self {
        Self { tasks: Mutex::default(), appended: tokio::sync::watch::Sender::new(0) }
    }
}

impl Logs {
    /// Adds the bytes of `task_id`'s output from `offset` on.
    pub fn append(&self, task_id: &str, offset: u64, data: &[u8]) {
        let mut tasks = self.tasks.lock().expect("log table poisoned");
        let output = tasks.entry(task_id.to_string()).or_default();
        let end = offset + data.len() as u64;
        if end <= output.received {
            return;
        }
        if offset > output.received {
            // Output the agent could not ship (rotated away first) is a gap.
            output.tail.clear();
            output.received = offset;
        }
        let skip = (output.received - offset) as usize;
        output.tail.extend_from_slice(&data[skip..]);
        output.received = end;
        if output.tail.len() > KEPT_BYTES {
            let excess = output.tail.len() - KEPT_BYTES;
            output.tail.drain(..excess);
        }
        drop(tasks);
        self.appended.send_modify(|n| *n += 1);
    }

    /// How far `task_id`'s output was received (0 when nothing was).
    pub fn received(&self, task_id: &str) -> u64 {
        self.tasks.lock().expect("log table poisoned").get(task_id).map_or(0, |o| o.received)
    }

    /// Where `task_id`'s kept output starts, or where its last `lines`
    /// lines start when given.
    pub fn start_of_tail(&self, task_id: &str, lines: Option<u64>) -> u64 {
        let tasks = self.tasks.lock().expect("log table poisoned");
        let Some(output) = tasks.get(task_id) else { return 0 };
        let Some(lines) = lines else { return output.start() };
        if lines == 0 {
            return output.received;
        }
        // The newline that ends the last line does not start a line.
        let body = output.tail.strip_suffix(b"\n").unwrap_or(&output.tail);
        let newlines = body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n');
        match newlines.map(|(i, _)| i).nth(lines as usize - 1) {
            Some(i) => output.start() + i as u64 + 1,
            None => output.start(),
        }
    }

    /// `task_id`'s kept output from `offset` on, and the offset after it.
    pub fn since(&self, task_id: &str, offset: u64) -> (Vec<u8>, u64) {
        let tasks = self.tasks.lock().expect("log table poisoned");
        let Some(output) = tasks.get(task_id) else { return (Vec::new(), offset) };
        let from = offset.max(output.start()).min(output.received);
        (output.tail[(from - output.start()) as usize..].to_vec(), output.received)
    }

    /// Whether no task's output is held.
    pub fn is_empty(&self) -> bool {
        self.tasks.lock().expect("log table poisoned").is_empty()
    }

    /// Forgets the output of every task for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.tasks.lock().expect("log table poisoned").retain(|id, _| keep(id));
    }

    /// A receiver that changes whenever output arrives.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(logs: &Logs, task: &str) -> Vec<u8> {
        logs.since(task, 0).0
    }

    #[test]
    fn chunks_sent_twice_are_kept_once() {
        let logs = Logs::default();
        logs.append("t", 0, b"hello\n");
        logs.append("t", 0, b"hello\nworld\n");
        logs.append("t", 6, b"world\n");
        assert_eq!(all(&logs, "t"), b"hello\nworld\n");
        assert_eq!(logs.received("t"), 12);
        assert!(all(&logs, "other").is_empty());
    }

    #[test]
    fn only_the_tail_is_kept_and_gaps_are_skipped() {
        let logs = Logs::default();
        logs.append("t", 0, &vec![b'a'; KEPT_BYTES]);
        logs.append("t", KEPT_BYTES as u64, b"end");
        let output = all(&logs, "t");
        assert_eq!(output.len(), KEPT_BYTES);
        assert!(output.ends_with(b"aend"));
        logs.append("t", 10_000_000, b"later");
        assert_eq!(all(&logs, "t"), b"later");
        assert_eq!(logs.since("t", 10_000_002), (b"ter".to_vec(), 10_000_005));
    }

    #[test]
    fn the_last_lines_are_found() {
        let logs = Logs::default();
        logs.append("t", 0, b"one\ntwo\nthree\n");
        let from = |n| logs.since("t", logs.start_of_tail("t", n)).0;
        assert_eq!(from(Some(1)), b"three\n");
        assert_eq!(from(Some(2)), b"two\nthree\n");
        assert_eq!(from(Some(3)), b"one\ntwo\nthree\n");
        assert_eq!(from(Some(10)), b"one\ntwo\nthree\n");
        assert_eq!(from(Some(0)), b"");
        assert_eq!(from(None), b"one\ntwo\nthree\n");
    }

    #[test]
    fn removed_tasks_are_forgotten() {
        let logs = Logs::default();
        logs.append("gone", 0, b"x");
        logs.append("kept", 0, b"y");
        logs.retain(|id| id == "kept");
        assert_eq!(logs.received("gone"), 0);
        assert_eq!(logs.received("kept"), 1);
    }
}
